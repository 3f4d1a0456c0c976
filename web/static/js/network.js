// The Network page's map: the shops as markers on a blank map (no tile server: offline).
(function () {
  "use strict";
  const box = document.getElementById("network-map");
  const data = document.getElementById("network-points");
  if (!box || !data || typeof L === "undefined") return;
  const points = JSON.parse(data.textContent);
  if (!points.length) { box.hidden = true; return; }
  // No zoom buttons: the page's CSS restyles their links; the wheel and pinch still zoom.
  const map = L.map(box, { attributionControl: false, zoomControl: false, zoomSnap: 0.25 });
  const bounds = [];
  points.forEach(function (p) {
    const marker = L.circleMarker([p.lat, p.lon], {
      radius: 7, weight: 2, color: p.expired ? "#9ca3af" : "#2563eb",
      fillOpacity: p.expired ? 0.2 : 0.6,
    }).addTo(map);
    marker.bindTooltip(p.name + (p.expired ? " (report expired)" : ""), { permanent: points.length <= 12 });
    bounds.push([p.lat, p.lon]);
  });
  map.fitBounds(bounds, { padding: [40, 40], maxZoom: 9 });
})();
