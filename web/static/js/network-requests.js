// Follow a fabrication request live: poll its API and reload the page when its state or log
// changes (a signed update arrived, or the other shop answered).
(function () {
  "use strict";
  var el = document.getElementById("request-follow");
  if (!el) return;
  var url = el.getAttribute("data-url");
  // What the page shows: the log's length, how many sent messages wait to be delivered,
  // and the state (which may change without a message, e.g. an acceptance on agreement).
  var seen = [el.getAttribute("data-messages"), el.getAttribute("data-pending"),
    el.getAttribute("data-state")].join("/");
  function key(body) {
    var pending = body.messages.filter(function (m) { return m.delivery_state === "pending"; });
    return [body.messages.length, pending.length, body.state].join("/");
  }
  function check() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (body) {
        if (body && key(body) !== seen) window.location.reload();
      })
      .catch(function () {});
  }
  window.setInterval(check, 3000);
})();
