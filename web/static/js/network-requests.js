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
        // Reloaded without the last action's flash message, which would be stale.
        if (body && key(body) !== seen) window.location.replace(window.location.pathname);
      })
      .catch(function () {});
  }
  window.setInterval(check, 3000);
})();

// A design's page: list the shops of the network that hold its content hash (the hubs'
// index, read through this shop).
(function () {
  "use strict";
  var el = document.getElementById("holders");
  if (!el) return;
  fetch(el.getAttribute("data-url"), { credentials: "same-origin", headers: { Accept: "application/json" } })
    .then(function (r) { return r.ok ? r.json() : null; })
    .then(function (body) {
      if (!body) { el.textContent = "The hubs could not be asked."; return; }
      if (!body.shops.length) {
        el.textContent = "No shop of the network lists it yet" +
          (body.problems.length ? " (" + body.problems.join("; ") + ")." : ".");
        return;
      }
      var list = document.createElement("ul");
      list.id = "holder-list";
      body.shops.forEach(function (s) {
        var li = document.createElement("li");
        var strong = document.createElement("strong");
        strong.textContent = s.name || s.shop_id;
        li.appendChild(strong);
        if (s.url) {
          li.appendChild(document.createTextNode(" "));
          var a = document.createElement("a");
          a.href = s.url;
          a.rel = "noopener nofollow";
          a.textContent = s.url;
          li.appendChild(a);
        }
        list.appendChild(li);
      });
      el.textContent = body.shops.length + (body.shops.length === 1 ? " shop holds" : " shops hold") + " this design:";
      el.appendChild(list);
    })
    .catch(function () { el.textContent = "The hubs could not be asked."; });
})();
