// The job page's G-code preview: the vendored gcode-preview (three.js), with a layer slider.
//
// The G-code comes from the job's authorised endpoint (its owner, operators), only when the
// file is at most the page's bound (job.html, preview_max_mib). It is read as it arrives and
// parsed, then drawn, in slices of about SLICE_MS of work: between slices the page gets the
// main thread back (input, painting, the event stream), so a vase of several MB does not
// freeze it (bench/bench_preview.py measures the longest task against the old whole-file
// parse and draw). The job page refreshes its main part from the event stream; the preview
// survives that: its element is moved into the fresh page.
import * as GCodePreview from "gcode-preview";
import { BufferAttribute, BufferGeometry, LineBasicMaterial, LineSegments } from "three";

const SLICE_MS = 12;  // work per slice; a frame is 16 ms, a "long task" 50 ms

// Give the main thread back: scheduler.yield() where there is one, else a message (a
// timeout would be clamped to 4 ms once nested).
const channel = new MessageChannel();
const waiting = [];
channel.port1.onmessage = () => { const resolve = waiting.shift(); if (resolve) resolve(); };
function yieldToPage() {
  if (globalThis.scheduler && typeof globalThis.scheduler.yield === "function") return globalThis.scheduler.yield();
  return new Promise((resolve) => { waiting.push(resolve); channel.port2.postMessage(null); });
}

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
  // The page's live refresh swaps its main part, perhaps while the file is still read or
  // drawn: put the preview back into the fresh slot.
  let shown = null;  // the layer count, once drawn
  const main = document.getElementById("main");
  if (main) {
    new MutationObserver(() => {
      const fresh = document.getElementById(slotId);
      if (fresh && !fresh.contains(wrap)) {
        fresh.replaceChildren(wrap);
        if (shown !== null) {
          fresh.dataset.layers = String(shown);
          say(`${shown} layers.`);
        }
      }
    }).observe(main, { childList: true, subtree: true });
  }

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
  // The library draws the whole scene on every animation frame, changed or not: with a
  // large file each frame is a long task, for as long as the page is open. Draw only when
  // something changed: a slice was added, the camera moved.
  preview.cancelAnimation();
  preview.controls.addEventListener("change", () => requestDraw(preview));
  say("Loading the G-code…");
  const resp = await fetch(slot.dataset.src, { credentials: "same-origin" });
  if (!resp.ok) {
    let detail = resp.statusText;
    try { detail = (await resp.json()).detail; } catch (e) { /* not JSON */ }
    say(`No preview: ${detail}`);
    return;
  }
  performance.mark("preview:reading");
  await readInSlices(preview, resp);
  performance.mark("preview:read");
  const layers = preview.layers.length;
  slider.max = String(layers);
  slider.value = String(layers);
  slider.disabled = layers === 0;
  out.textContent = `${layers} of ${layers}`;
  if (!layers) { say("No layers found to draw."); shown = 0; currentSlot().dataset.layers = "0"; return; }
  await drawInSlices(preview, layers, layers);
  performance.mark("preview:drawn");
  slider.addEventListener("input", () => {
    const upTo = Number(slider.value);
    out.textContent = `${upTo} of ${layers}`;
    drawInSlices(preview, upTo, layers);  // a newer move of the slider stops an older draw
  });
  say(`${layers} layers.`);
  shown = layers;
  currentSlot().dataset.layers = String(layers);  // what the page's tests (and the bench) wait for
}

function currentSlot() {
  return document.getElementById(slotId) || slot;
}

// Read the response as it arrives and parse it a slice of lines at a time.
async function readInSlices(preview, resp) {
  const total = Number(resp.headers.get("content-length")) || 0;
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  const parser = preview.parser;
  let rest = "";
  let received = 0;
  let step = 2000;  // lines per parse call, tuned to SLICE_MS as it goes
  let sliceStart = performance.now();
  for (;;) {
    const { done, value } = await reader.read();
    if (value) received += value.length;
    const text = rest + (done ? decoder.decode() : decoder.decode(value, { stream: true }));
    const cut = done ? text.length : text.lastIndexOf("\n") + 1;
    rest = text.slice(cut);
    const lines = cut ? text.slice(0, cut).split("\n") : [];
    for (let i = 0; i < lines.length;) {
      const t0 = performance.now();
      const n = step;
      parser.parseGCode(lines.slice(i, i + n));
      parser.lines = [];  // the parser keeps every line as text too: the preview needs none
      i += n;
      // Aim at a quarter of a slice per call; grow slowly (a collection may land on a call).
      const took = Math.max(performance.now() - t0, 0.25);
      step = Math.max(100, Math.min(2 * n, 20000, Math.round((n * SLICE_MS) / 4 / took)));
      if (performance.now() - sliceStart >= SLICE_MS) {
        const pct = total ? ` ${Math.min(99, Math.floor((100 * received) / total))} %` : "";
        say(`Reading the G-code…${pct} · ${parser.layers.length} layers so far`);
        await yieldToPage();
        sliceStart = performance.now();
      }
    }
    if (done) break;
  }
}

let frame = 0;
function requestDraw(preview) {
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    preview.renderer.render(preview.scene, preview.camera);
  });
}

// One line object for a slice's layers instead of one a layer (each is a draw call on every
// frame): their segments in one buffer, each layer's colour kept as vertex colours.
function mergeLines(preview, group) {
  const lines = group.children.filter((o) => o.isLineSegments && o.geometry.attributes.position);
  if (lines.length < 2) return;
  let count = 0;
  for (const line of lines) count += line.geometry.attributes.position.count;
  const positions = new Float32Array(count * 3);
  const colors = new Float32Array(count * 3);
  let at = 0;
  for (const line of lines) {
    const src = line.geometry.attributes.position.array;
    positions.set(src, at);
    const { r, g, b } = line.material.color;
    for (let k = at; k < at + src.length; k += 3) { colors[k] = r; colors[k + 1] = g; colors[k + 2] = b; }
    at += src.length;
    group.remove(line);
    line.geometry.dispose();
    line.material.dispose();
  }
  const geometry = new BufferGeometry();
  geometry.setAttribute("position", new BufferAttribute(positions, 3));
  geometry.setAttribute("color", new BufferAttribute(colors, 3));
  const material = new LineBasicMaterial({ vertexColors: true });
  preview.disposables.push(geometry, material);  // disposed when the scene is drawn again
  group.add(new LineSegments(geometry, material));
}

// Draw layers 1..upTo (the library's endLayer), a slice of layers at a time, as the library's
// render() does in one go. Returns false when a newer draw took over.
let drawing = 0;
async function drawInSlices(preview, upTo, layers) {
  const mine = ++drawing;
  preview.endLayer = upTo;
  preview.initScene();
  Object.assign(preview.state, { x: 0, y: 0, z: 0, r: 0, e: 0, i: 0, j: 0, t: 0 });
  let i = 0;
  while (i < upTo) {
    const t0 = performance.now();
    preview.group = preview.createGroup(`layers-from-${i}`);
    while (i < upTo && performance.now() - t0 < SLICE_MS) preview.renderLayer(i++);
    preview.batchGeometries();
    mergeLines(preview, preview.group);
    preview.scene.add(preview.group);
    requestDraw(preview);
    if (i < upTo) {
      if (upTo === layers) say(`Drawing layer ${i} of ${layers}…`);
      await yieldToPage();
      if (mine !== drawing) return false;
    }
  }
  if (upTo === layers) say(`${layers} layers.`);
  return true;
}

start().catch((err) => say(`No preview: ${err.message}`));
