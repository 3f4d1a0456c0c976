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
