// The menu's unread badge, kept live by the server's event stream (the one app.js opens on
// live pages, or its own here): every message recorded for this person, whatever it is about
// (a job approved, started, finished, failed or waiting, a bed to clear, a booking confirmed,
// cancelled, released or due), comes as a `notification` event once it is committed, and the
// badge reads the count again. Job changes read it too (operators: any job). On the messages
// page the page itself is refetched (app.js), which reads them: its badge comes with it.
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
    if (document.querySelector("[data-live-notifications]")) return;  // app.js refetches it
    if (pending) return;  // a burst of events reads the count once
    pending = setTimeout(async () => {
      pending = null;
      try {
        const resp = await fetch("/api/v1/notifications/unread", { credentials: "same-origin" });
        if (resp.ok) show((await resp.json()).unread);
      } catch (err) {
        // offline for a moment: the next event reads it again
      }
    }, 150);
  }

  const source = window.microfactoryStream || new EventSource("/api/v1/machines/stream");
  window.microfactoryStream = source;
  source.addEventListener("notification", refresh);
  source.addEventListener("job", refresh);
})();
