// Follow a fabrication request live: poll its API and reload the page when its state or log
// changes (a signed update arrived, or the other shop answered).
(function () {
  "use strict";
  var el = document.getElementById("request-follow");
  if (!el) return;
  var url = el.getAttribute("data-url");
  var seen = el.getAttribute("data-messages");
  function check() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (body) {
        if (body && String(body.messages.length) !== seen) window.location.reload();
      })
      .catch(function () {});
  }
  window.setInterval(check, 5000);
})();
