// The menu's unread badge, kept live by the server's event stream (the one app.js opens on
// live pages, or its own here): when one of the member's jobs changes (operators: any job),
// the message about it is already committed (the server records messages before it streams
// the change), so the badge reads the count again.
(function () {
  "use strict";
  const badge = document.querySelector("[data-unread-badge]");
  const link = document.querySelector("[data-unread-link]");
  if (!badge || typeof EventSource === "undefined") return;

  function show(count) {
    badge.textContent = String(count);
    badge.hidden = count === 0;
    badge.setAttribute("aria-label", `${count} unread message${count === 1 ? "" : "s"}`);
    if (link) link.textContent = count ? `Messages (${count} new)` : "Messages";
  }

  let pending = null;
  function refresh() {
    if (pending) return;  // a burst of job events reads the count once
    pending = setTimeout(async () => {
      pending = null;
      try {
        const resp = await fetch("/api/v1/notifications/unread", { credentials: "same-origin" });
        if (resp.ok) show((await resp.json()).unread);
      } catch (err) {
        // offline for a moment: the next job event reads it again
      }
    }, 150);
  }

  const source = window.microfactoryStream || new EventSource("/api/v1/machines/stream");
  window.microfactoryStream = source;
  source.addEventListener("job", refresh);
})();
