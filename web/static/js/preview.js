// The job page's G-code preview: the vendored gcode-preview (three.js), with a layer slider.
//
// The G-code comes from the job's authorised endpoint (its owner, operators), only when the
// file is at most the page's bound (data-max-bytes). The job page refreshes its main part
// from the event stream; the preview survives that: its element is moved into the fresh page.
import * as GCodePreview from "gcode-preview";

const slotId = "gcode-preview-slot";
const slot = document.getElementById(slotId);

function say(text) {
  const status = document.getElementById("preview-status");
  if (status) status.textContent = text;
}

async function start() {
  if (!slot) return;
  const wrap = document.createElement("div");
  wrap.className = "preview-wrap";
  const canvas = document.createElement("canvas");
  canvas.id = "gcode-canvas";
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", "3D preview of the job's G-code, layer by layer");
  const label = document.createElement("label");
  label.htmlFor = "layer-slider";
  label.textContent = "Layers shown up to ";
  const out = document.createElement("output");
  out.id = "layer-value";
  out.htmlFor = "layer-slider";
  label.append(out);
  const slider = document.createElement("input");
  slider.type = "range";
  slider.id = "layer-slider";
  slider.min = "1";
  slider.disabled = true;
  wrap.append(canvas, label, slider);
  slot.replaceChildren(wrap);

  // Centre the part: a build volume twice its centre puts it at the origin the camera looks at.
  const view = {};
  if (slot.dataset.bbox) {
    const b = JSON.parse(slot.dataset.bbox);
    const cx = (b.min_x + b.max_x) / 2, cy = (b.min_y + b.max_y) / 2;
    if (cx > 0 && cy > 0) view.buildVolume = { x: 2 * cx, y: 2 * cy, z: Math.max(b.max_z, 1) };
    const size = Math.max(b.max_x - b.min_x, b.max_y - b.min_y, b.max_z - b.min_z, 20);
    const d = size * 2.6;
    view.initialCameraPosition = [-0.35 * d, 0.9 * d, 1.1 * d];
  }
  let preview;
  try {
    preview = GCodePreview.init({
      ...view,
      canvas,
      extrusionColor: "#2563eb",
      topLayerColor: "#f59e0b",
      backgroundColor: "#f8fafc",
      // A mill's or a laser's moves extrude nothing: draw them as the travel they are.
      renderTravel: slot.dataset.kind !== "fdm_printer",
    });
  } catch (err) {
    say("This browser cannot draw the 3D preview (WebGL is off).");
    return;
  }
  say("Loading the G-code…");
  const resp = await fetch(slot.dataset.src, { credentials: "same-origin" });
  if (!resp.ok) {
    let detail = resp.statusText;
    try { detail = (await resp.json()).detail; } catch (e) { /* not JSON */ }
    say(`No preview: ${detail}`);
    return;
  }
  preview.processGCode(await resp.text());
  const layers = preview.layers.length;
  slider.max = String(layers);
  slider.value = String(layers);
  slider.disabled = layers === 0;
  out.textContent = `${layers} of ${layers}`;
  slider.addEventListener("input", () => {
    preview.endLayer = Number(slider.value);
    out.textContent = `${slider.value} of ${layers}`;
    preview.render();
  });
  say(layers ? `${layers} layers.` : "No layers found to draw.");
  slot.dataset.layers = String(layers);  // what the page's tests wait for

  // The page's live refresh swaps its main part: put the preview back into the fresh slot.
  new MutationObserver(() => {
    const fresh = document.getElementById(slotId);
    if (fresh && !fresh.contains(wrap)) {
      fresh.replaceChildren(wrap);
      fresh.dataset.layers = String(layers);
      say(`${layers} layers.`);
    }
  }).observe(document.getElementById("main"), { childList: true, subtree: true });
}

start().catch((err) => say(`No preview: ${err.message}`));
