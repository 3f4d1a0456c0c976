// The machine page: a live temperature graph (uPlot), status, job, controls and a terminal,
// all following the server's machine event stream (app.js's, shared with the rest of the page).
(function () {
  "use strict";
  const root = document.querySelector("[data-machine-page]");
  if (!root) return;
  const machineId = root.dataset.machinePage;
  const staff = root.dataset.staff === "1";
  const grbl = root.dataset.grbl === "1";
  const api = `/api/v1/machines/${machineId}`;
  const KEEP_S = 600;  // the server keeps ten minutes of temperatures; so does the graph
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

  async function post(url, body) {
    const resp = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify(body || {}),
    });
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      const detail = data && data.detail ? data.detail : resp.statusText;
      throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return data;
  }

  function flash(text, isError) {
    const box = document.getElementById("flash");
    box.textContent = text;
    box.className = isError ? "flash error" : "flash";
    box.hidden = false;
  }

  function fmtEta(s) {
    if (s === null || s === undefined) return "";
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return h ? `${h} h ${m} min` : (m ? `${m} min ${r} s` : `${r} s`);
  }

  const field = (name) => root.querySelector(`[data-field="${name}"]`);
  const setText = (name, text) => { const el = field(name); if (el) el.textContent = text; };

  // -- the temperature graph -------------------------------------------------------------
  const HEATER_NAMES = { T: "Hotend", T0: "Hotend 0", T1: "Hotend 1", B: "Bed", C: "Chamber" };
  const COLOURS = ["#dc2626", "#2563eb", "#16a34a", "#9333ea", "#ea580c"];
  const graphEl = document.getElementById("temp-graph");
  let heaters = [];  // names in series order
  let samples = [];  // [{t, temps: {name: [actual, target]}}]
  let plot = null;

  function seriesData() {
    const xs = samples.map((s) => s.t);
    const data = [xs];
    heaters.forEach((h) => {
      data.push(samples.map((s) => (s.temps[h] ? s.temps[h][0] : null)));
      data.push(samples.map((s) => (s.temps[h] ? s.temps[h][1] : null)));
    });
    return data;
  }

  const rank = (h) => (h.startsWith("T") ? 0 : h === "B" ? 1 : 2);
  function buildPlot() {
    if (!graphEl || typeof uPlot === "undefined") return;
    heaters.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
    if (plot) { plot.destroy(); plot = null; }
    const series = [{}];
    heaters.forEach((h, i) => {
      const colour = COLOURS[i % COLOURS.length];
      const label = HEATER_NAMES[h] || h;
      series.push({ label: `${label} °C`, stroke: colour, width: 2, spanGaps: true, points: { show: false } });
      series.push({ label: `${label} target`, stroke: colour, width: 1, dash: [6, 4], spanGaps: true, points: { show: false } });
    });
    const width = Math.max(280, graphEl.clientWidth || 600);
    plot = new uPlot({
      width,
      height: 240,
      series,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(50, Math.ceil((max || 0) / 50) * 50 + 10)] } },
      axes: [{}, { label: "°C" }],
      legend: { live: false },
    }, seriesData(), graphEl);
    graphEl.dataset.drawn = String(samples.length);
  }

  function addSample(t, temps) {
    const values = {};
    let fresh = false;
    for (const [name, v] of Object.entries(temps || {})) {
      if (v == null || v.actual == null) continue;
      values[name] = [v.actual, v.target == null ? null : v.target];
      if (!heaters.includes(name)) { heaters.push(name); fresh = true; }
    }
    if (!Object.keys(values).length) return;
    const last = samples[samples.length - 1];
    if (last && t - last.t < 1) return;  // at most one point a second, as the server keeps
    samples.push({ t, temps: values });
    const horizon = t - KEEP_S;
    while (samples.length && samples[0].t < horizon) samples.shift();
    if (fresh || !plot) buildPlot();
    else { plot.setData(seriesData()); graphEl.dataset.drawn = String(samples.length); }
  }

  if (graphEl) {
    const initial = JSON.parse(document.getElementById("temp-history").textContent || "[]");
    initial.forEach((s) => Object.keys(s.temps).forEach((h) => { if (!heaters.includes(h)) heaters.push(h); }));
    samples = initial;
    if (heaters.length) buildPlot();
    window.addEventListener("resize", () => { if (plot) plot.setSize({ width: Math.max(280, graphEl.clientWidth), height: 240 }); });
  }

  // -- live status ------------------------------------------------------------------------
  function renderTempsNow(temps) {
    const el = field("temps-now");
    if (!el) return;
    el.textContent = "";
    for (const [name, t] of Object.entries(temps || {})) {
      const span = document.createElement("span");
      const target = t.target ? ` / ${Math.round(t.target)}` : "";
      span.textContent = `${HEATER_NAMES[name] || name} ${Number(t.actual).toFixed(1)}${target} °C`;
      el.appendChild(span);
    }
  }

  function update(st) {
    const state = field("state");
    if (state) { state.textContent = st.state; state.className = `state state-${st.state}`; }
    setText("message", st.message || "");
    if (st.firmware) setText("firmware", st.firmware);
    renderTempsNow(st.temperatures);
    const keys = Object.keys(st.position || {});
    if (keys.length) setText("position", keys.map((k) => `${k.toUpperCase()} ${Number(st.position[k]).toFixed(2)}`).join("  "));
    if (graphEl && st.temperatures && Object.keys(st.temperatures).length) addSample(st.updated_at || Date.now() / 1000, st.temperatures);
    const recover = root.querySelector("[data-recover]");
    if (recover) { recover.hidden = st.state !== "error"; setText("halt-reason", st.message || ""); }
    const active = st.job_id != null || ["running", "paused"].includes(st.state);
    const noJob = root.querySelector("[data-no-job]");
    const hasJob = root.querySelector("[data-has-job]");
    if (noJob) noJob.hidden = active;
    if (hasJob) {
      hasJob.hidden = !active;
      const link = hasJob.querySelector("[data-job-link]");
      if (link && st.job_id != null && link.getAttribute("href") !== `/jobs/${st.job_id}`) {
        link.href = `/jobs/${st.job_id}`; link.textContent = `Job ${st.job_id}`; link.hidden = false;
      }
      const other = hasJob.querySelector("[data-other-job]");
      if (other) other.hidden = st.job_id != null;
      if (link && st.job_id == null) link.hidden = true;
      const prog = st.progress;
      const bar = hasJob.querySelector("progress");
      if (bar && prog) bar.value = prog.percent;
      setText("percent", prog ? `${prog.percent.toFixed(1)} %` : "");
      const eta = prog && prog.eta_s != null && ["running", "paused"].includes(st.state);
      setText("eta", eta ? `· ETA ${fmtEta(prog.eta_s)}` : "");
    }
  }

  // The page's one stream is app.js's (loaded first: it also keeps the maintenance log, the
  // badges and the unread badge live); a page without it opens its own.
  const source = window.microfactoryStream || new EventSource("/api/v1/machines/stream");
  source.addEventListener("machine", (ev) => {
    const data = JSON.parse(ev.data);
    if (String(data.id) === machineId && data.status) update(data.status);
  });

  // -- the webcam, through our server's proxy ---------------------------------------------
  // The picture is loaded only once /webcam/status says the camera answers: a machine whose
  // camera is away shows the placeholder, and the browser logs no failed load.
  const cam = root.querySelector("[data-webcam]");
  if (cam) {
    const placeholder = root.querySelector("[data-webcam-placeholder]");
    const message = root.querySelector("[data-webcam-message]");
    const away = (placeholder && placeholder.dataset.away) || "The webcam cannot be reached right now.";
    const base = cam.dataset.src;
    const snapshotOnly = cam.dataset.snapshot === "1";
    let timer = null;
    const later = (fn, after) => { clearTimeout(timer); timer = setTimeout(fn, after); };
    const showPlaceholder = (text) => {
      cam.hidden = true;
      cam.removeAttribute("src");
      if (message) message.textContent = text;
      if (placeholder) placeholder.hidden = false;
    };
    async function check() {
      let state = null;
      try {
        const resp = await fetch(cam.dataset.status, { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (resp.ok) state = await resp.json();
      } catch (e) { state = null; }  // the server is away: try again in a while
      if (state && state.available) {
        cam.src = `${base}?t=${Date.now()}`;
        return;
      }
      showPlaceholder(state ? state.message : away);
      if (!state || state.configured !== false) later(check, 10000);
    }
    cam.addEventListener("error", () => { showPlaceholder(away); later(check, 10000); });
    cam.addEventListener("load", () => {
      cam.hidden = false;
      if (placeholder) placeholder.hidden = true;
      // A snapshot is refreshed; a stream ends on the server after five minutes: reopen it.
      later(snapshotOnly ? () => { cam.src = `${base}?t=${Date.now()}`; } : check, snapshotOnly ? 2000 : 240000);
    });
    check();
  }

  // -- controls (operators) ---------------------------------------------------------------
  if (!staff) return;
  const log = root.querySelector("[data-terminal-log]");

  function print(text, cls) {
    if (!log) return;
    const line = document.createElement("div");
    if (cls) line.className = cls;
    line.textContent = text;
    log.appendChild(line);
    while (log.childNodes.length > 500) log.removeChild(log.firstChild);
    log.scrollTop = log.scrollHeight;
  }

  function printResults(data) {
    (data && data.results || []).forEach((r) => {
      (r.reply || []).forEach((l) => print(l));
      if (!r.ok) print(`error: ${r.error}`, "err");
      else if (!(r.reply || []).length) print("(sent; no reply)", "note");
    });
  }

  async function act(button, url, body, describe) {
    if (button) { button.disabled = true; button.setAttribute("aria-busy", "true"); }
    try {
      const data = await post(url, body);
      if (describe) print(describe, "sent");
      printResults(data);
      if (data && data.message) { flash(data.message, false); print(data.message, "note"); }
      // No status from the answer: the stream has it, and the answer may be older.
      return data;
    } catch (err) {
      flash(err.message, true);
      print(err.message, "err");
      return null;
    } finally {
      if (button) { button.disabled = false; button.removeAttribute("aria-busy"); }
    }
  }

  root.addEventListener("click", (ev) => {
    const b = ev.target.closest("button");
    if (!b || !root.contains(b)) return;
    if (b.dataset.jog) {
      const step = Number(root.querySelector("[data-jog-step]").value) * Number(b.dataset.dir);
      act(b, `${api}/jog`, { [b.dataset.jog]: step }, `jog ${b.dataset.jog.toUpperCase()} ${step} mm`);
    } else if (b.hasAttribute("data-home")) {
      act(b, `${api}/home`, {}, grbl ? "$H" : "G28");
    } else if (b.dataset.preheat) {
      act(b, `${api}/preheat`, { preset: b.dataset.preheat }, `preheat ${b.dataset.preheat}`);
    } else if (b.hasAttribute("data-estop")) {
      if (!window.confirm("EMERGENCY STOP? The machine stops at once and must be reset and homed again.")) return;
      act(b, `${api}/emergency-stop`, {}, "emergency stop").then((data) => { if (data) flash("Emergency stop sent: the machine is halted.", true); });
    } else if (b.hasAttribute("data-reset")) {
      const warn = grbl
        ? "Reset GRBL (Ctrl-X) and unlock it ($X)? The position is lost: home the machine before the next job."
        : "Reset the machine and reconnect? Its firmware restarts (heaters off, not homed).";
      if (!window.confirm(warn)) return;
      flash("Resetting and reconnecting…", false);
      act(b, `${api}/reset`, {}, "reset and reconnect");
    }
  });

  // The terminal: raw lines with the firmware's replies, and a history on ↑/↓ kept per machine.
  const form = root.querySelector("[data-terminal]");
  if (!form) return;
  const input = form.querySelector("input");
  const key = `mf-terminal-${machineId}`;
  let history = [];
  try { history = JSON.parse(window.localStorage.getItem(key) || "[]"); } catch (e) { history = []; }
  let cursor = history.length;

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const line = input.value.trim();
    if (!line) return;
    if (history[history.length - 1] !== line) history.push(line);
    history = history.slice(-100);
    try { window.localStorage.setItem(key, JSON.stringify(history)); } catch (e) { /* private mode */ }
    cursor = history.length;
    input.value = "";
    print(`> ${line}`, "sent");
    try {
      printResults(await post(`${api}/commands`, { lines: [line] }));
    } catch (err) {
      print(err.message, "err");
    }
  });

  input.addEventListener("keydown", (ev) => {
    if (ev.key === "ArrowUp" && cursor > 0) {
      cursor -= 1; input.value = history[cursor]; ev.preventDefault();
    } else if (ev.key === "ArrowDown") {
      cursor = Math.min(history.length, cursor + 1);
      input.value = cursor < history.length ? history[cursor] : "";
      ev.preventDefault();
    }
  });
})();
