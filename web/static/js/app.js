// microfactory dashboard: API actions from buttons, and the live machine stream.
(function () {
  "use strict";
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

  async function callApi(url, body) {
    const resp = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: body ? JSON.stringify(body) : "{}",
    });
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      const detail = data && data.detail ? data.detail : resp.statusText;
      throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return data;
  }

  function showMessage(text, isError) {
    let box = document.getElementById("flash");
    if (!box) return alert(text);
    box.textContent = text;
    box.className = isError ? "flash error" : "flash";
    box.hidden = false;
  }

  // <button data-api="/api/v1/jobs/1/pause" data-confirm="..." data-body='{"outcome":"good"}'>
  document.addEventListener("click", async (ev) => {
    const btn = ev.target.closest("[data-api]");
    if (!btn) return;
    ev.preventDefault();
    if (btn.dataset.confirm && !window.confirm(btn.dataset.confirm)) return;
    let body = btn.dataset.body ? JSON.parse(btn.dataset.body) : null;
    const form = btn.closest("form[data-api-form]");
    if (form) {
      body = body || {};
      new FormData(form).forEach((v, k) => {
        if (k === "csrf_token") return;
        body[k] = v === "" ? null : (/^\d+$/.test(v) ? Number(v) : (v === "true" ? true : (v === "false" ? false : v)));
      });
    }
    btn.disabled = true;
    btn.setAttribute("aria-busy", "true");
    try {
      const data = await callApi(btn.dataset.api, body);
      // data-goto="/jobs/{id}": go to what the call made (a re-print's new job), else reload.
      if (btn.dataset.goto && data && data.id != null) window.location.assign(btn.dataset.goto.replace("{id}", data.id));
      else window.location.reload();
    } catch (err) {
      showMessage(err.message, true);
      btn.disabled = false;
      btn.removeAttribute("aria-busy");
    }
  });

  function fmtEta(s) {
    if (s === null || s === undefined) return "";
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return h ? `${h} h ${m} min` : (m ? `${m} min ${r} s` : `${r} s`);
  }

  function renderTemps(temps) {
    const parts = [];
    for (const [name, t] of Object.entries(temps || {})) {
      const target = t.target ? ` / ${Math.round(t.target)}` : "";
      parts.push(`${name} ${Math.round(t.actual)}${target} °C`);
    }
    return parts.join(" · ");
  }

  function renderPos(pos) {
    const keys = Object.keys(pos || {});
    if (!keys.length) return "";
    return keys.map((k) => `${k.toUpperCase()} ${Number(pos[k]).toFixed(2)}`).join(" ");
  }

  function update(card, st) {
    const set = (field, text) => {
      const el = card.querySelector(`[data-field=${field}]`);
      if (!el) return;
      el.textContent = text || "";
      const row = el.closest("[data-row]");
      if (row) row.hidden = !text;
    };
    const state = card.querySelector("[data-field=state]");
    if (state) { state.textContent = st.state; state.className = `state state-${st.state}`; }
    set("message", st.message);
    set("temps", renderTemps(st.temperatures));
    set("position", renderPos(st.position));
    const extra = st.extra || {};  // Klipper printers (Moonraker): Klippy's own state
    const klippy = extra.klippy_state
      ? extra.klippy_state + (extra.klippy_state !== "ready" && extra.klippy_message ? `: ${extra.klippy_message}` : "")
      : "";
    set("klippy", klippy);
    const klippyEl = card.querySelector("[data-field=klippy]");
    const klippyDt = klippyEl && klippyEl.closest("dd") && klippyEl.closest("dd").previousElementSibling;
    if (klippyDt) klippyDt.hidden = !klippy;
    const prog = st.progress;
    // Another job on the machine: its slicer picture is the server's to render (only a job
    // the user may see, only one that has a picture), so the grid fetches itself again; a
    // job that ended takes its picture with it at once.
    const jobId = st.job_id != null ? String(st.job_id) : "";
    if (card.dataset.jobId !== undefined && card.dataset.jobId !== jobId) {
      card.dataset.jobId = jobId;
      card.querySelectorAll("[data-job-thumb]").forEach((img) => img.remove());
      if (jobId) scheduleRefresh();
    }
    const jobBox = card.querySelector("[data-job]");
    if (jobBox) {
      jobBox.hidden = !st.job_id;
      const link = jobBox.querySelector("a");
      if (link) {
        link.hidden = !st.job_id;
        if (st.job_id) { link.href = `/jobs/${st.job_id}`; link.textContent = `Job ${st.job_id}`; }
        else link.removeAttribute("href");  // no "Job None" link on an idle machine
      }
      const bar = jobBox.querySelector("progress");
      if (bar && prog) { bar.value = prog.percent; bar.textContent = `${prog.percent}%`; }
      set("percent", prog ? `${prog.percent.toFixed(1)} %` : "");
      set("eta", prog && prog.eta_s != null ? `ETA ${fmtEta(prog.eta_s)}` : "");
      card.querySelectorAll("[data-job-action]").forEach((b) => {
        const action = b.dataset.jobAction;
        b.dataset.api = st.job_id ? `/api/v1/jobs/${st.job_id}/${action}` : "";
        const allowed = { pause: ["running"], resume: ["paused"], cancel: ["running", "paused"] }[action];
        b.hidden = !st.job_id || !allowed.includes(st.state);
      });
    }
  }

  // Pages that follow the server's event stream (one stream per page, no timed reloads):
  // the machine grid updates its cards, and adds, redraws or drops one when an admin adds,
  // changes or deletes a machine; a machine's page its name, or says it was removed; the
  // job page its progress, and the whole page when the job changes; the queue and the job
  // lists when any job they may show changes; the requests between shops when one changes;
  // the usage and statement pages when a job ends (its usage is recorded by then); the
  // messages page when a message arrives; the bookings list when machine time is booked or
  // freed, or a message arrives; a machine's page its maintenance log when that machine's
  // time changes and its badges when an admin changes it; the admin's machine list when a
  // machine is added, changed or removed, or a job starts or ends.
  async function refreshMain() {
    const main = document.getElementById("main");
    if (!main) return;
    // Never swap a form out from under someone typing: what holds the focused field is
    // refreshed when they leave it; the page's other live parts are refreshed now.
    const typing = (root) => {
      const active = document.activeElement;
      return active && root.contains(active) && active.matches("input, select, textarea") ? active : null;
    };
    const later = (field) => field.addEventListener("blur", () => scheduleRefresh(), { once: true });
    const parts = () => main.querySelectorAll("[data-live-region][id]");
    if (!parts().length && typing(main)) { later(typing(main)); return; }
    // data-live-url: where the page's live parts come from, when the address shown is that of
    // a form's answer (POST /bookings/feed renders the bookings page).
    const src = main.querySelector("[data-live-url]");
    const url = src ? src.dataset.liveUrl : window.location.href;
    const resp = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
    if (!resp.ok) return;
    const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
    const fresh = doc.getElementById("main");
    if (!fresh) return;
    syncBadge(doc);
    // A page may mark the parts that change (data-live-region, with an id): only those are
    // swapped, so a form beside them keeps what was typed. The whole page is swapped when
    // its data-live-key changed (a request's state: other actions are offered).
    const key = (root) => { const k = root.querySelector("[data-live-key]"); return k ? k.dataset.liveKey : null; };
    if (!parts().length || key(main) !== key(fresh)) {
      if (typing(main)) { later(typing(main)); return; }
      main.innerHTML = fresh.innerHTML;
    } else {
      parts().forEach((part) => {
        const next = doc.getElementById(part.id);
        if (!next) return;
        if (typing(part)) later(typing(part));
        else part.replaceWith(next);
      });
    }
    reapplyAnnouncements();
  }

  // What admins announced about machines, newest last. A refresh fetched before the latest
  // announcement's commit shows the machine as it was: the name and the removal are applied
  // again at once, and another refresh follows (scheduleRefresh while one is in flight).
  const announcedNames = new Map();
  const removedMachines = new Set();
  function reapplyAnnouncements() {
    removedMachines.forEach((id) => document.querySelectorAll(`[data-machine-id="${id}"]`).forEach((card) => card.remove()));
    announcedNames.forEach((name, id) => {
      document.querySelectorAll(`[data-machine-id="${id}"] [data-field=name]`).forEach((el) => { el.textContent = name; });
    });
    if (removedMachines.size) showMachineCount();
  }

  // The menu's unread badge as the page just fetched has it (the messages page reads them).
  function syncBadge(doc) {
    [["[data-unread-badge]", true], ["[data-unread-link]", false]].forEach(([sel, badge]) => {
      const now = document.querySelector(sel), next = doc.querySelector(sel);
      if (!now || !next) return;
      now.textContent = next.textContent;
      if (badge) { now.hidden = next.hidden; now.setAttribute("aria-label", next.getAttribute("aria-label") || ""); }
    });
  }

  // One refresh at a time: a change heard while one is being fetched refreshes again after
  // it, so an older answer never lands after a newer one (a rename, then a disable at once).
  let refreshTimer = null;
  let refreshing = false;
  let refreshAgain = false;
  function scheduleRefresh() {
    if (refreshing) { refreshAgain = true; return; }
    if (refreshTimer) return;
    refreshTimer = setTimeout(async () => {
      refreshTimer = null;
      refreshing = true;
      try { await refreshMain(); } catch (err) { /* offline for a moment: the next event refreshes */ }
      refreshing = false;
      if (refreshAgain) { refreshAgain = false; scheduleRefresh(); }
    }, 250);
  }

  function updateJobProgress(jobEl, st) {
    const prog = st.progress;
    if (!prog) return;
    const bar = document.getElementById("job-progress");
    if (bar) bar.value = prog.percent;
    const text = document.getElementById("job-progress-text");
    if (text) {
      const total = jobEl.dataset.linesTotal;
      const eta = prog.eta_s != null && ["running", "paused"].includes(st.state) ? ` · ETA ${fmtEta(prog.eta_s)}` : "";
      text.textContent = `${prog.percent.toFixed(1)} % · ${prog.lines_acked || 0} of ${total} lines${eta}`;
    }
  }

  function showMachineCount() {
    const el = document.querySelector("[data-field=machine-count]");
    const liveGrid = document.querySelector("[data-live-machines]");
    if (!el || !liveGrid) return;
    const n = liveGrid.querySelectorAll("[data-machine-id]").length;
    el.textContent = `${n} machine${n === 1 ? "" : "s"}`;
  }

  // A machine's own page, when an admin renames or deletes the machine (machine.js keeps
  // its status live).
  function announceOnMachinePage(id, st) {
    const page = document.querySelector(`[data-machine-page="${id}"]`);
    if (!page) return;
    if (st.removed) {
      if (page.querySelector("[data-machine-removed]")) return;
      const note = document.createElement("p");
      note.className = "flash error";
      note.setAttribute("role", "status");
      note.dataset.machineRemoved = "";
      note.append("This machine was removed by an admin. ");
      const back = document.createElement("a");
      back.href = "/machines";
      back.textContent = "All machines";
      note.append(back);
      page.prepend(note);
      return;
    }
    if (st.name) {
      const title = page.querySelector(".page-head h1");
      if (title) title.textContent = st.name;
      document.title = `${st.name} · microfactory`;
    }
  }

  const live = (sel) => document.querySelector(sel);  // looked up again: refreshes replace them
  if (["[data-live-machines]", "[data-machine-page]", "[data-live-jobs]", "[data-live-job]",
    "[data-live-requests]", "[data-live-request]", "[data-live-usage]",
    "[data-live-notifications]", "[data-live-bookings]", "[data-live-admin-machines]"].some(live)) {
    const source = new EventSource("/api/v1/machines/stream");
    // Shared: notifications.js keeps the badge live on it, machine.js the machine page.
    window.microfactoryStream = source;
    const machinePage = (id) => live(`[data-machine-page="${id}"]`);
    source.addEventListener("machine", (ev) => {
      const data = JSON.parse(ev.data);
      const st = data.status || {};
      if (st.removed || st.name) announceOnMachinePage(data.id, st);
      if (st.removed) {  // deleted by an admin
        removedMachines.add(String(data.id));
        announcedNames.delete(String(data.id));
        document.querySelectorAll(`[data-machine-id="${data.id}"]`).forEach((card) => card.remove());
        showMachineCount();
        if (refreshing || refreshTimer) scheduleRefresh();  // that answer may still show it
        return;
      }
      if (st.edited) {  // added or changed: a machine given the id of a removed one is shown
        removedMachines.delete(String(data.id));
        if (st.name) announcedNames.set(String(data.id), st.name);
      }
      const liveGrid = live("[data-live-machines]");
      // A machine the grid has no card for was just added: fetch the grid with its card.
      if (liveGrid && !liveGrid.querySelector(`[data-machine-id="${data.id}"]`)) scheduleRefresh();
      else if (liveGrid && st.edited) scheduleRefresh();  // kind, driver, badges
      if (st.edited && (machinePage(data.id) || live("[data-live-admin-machines]"))) scheduleRefresh();
      if (st.name) {  // renamed by an admin: at once, before the refresh
        document.querySelectorAll(`[data-machine-id="${data.id}"] [data-field=name]`).forEach((el) => { el.textContent = st.name; });
      }
      document.querySelectorAll(`[data-machine-id="${data.id}"]`).forEach((card) => update(card, st));
      const jobEl = live("[data-live-job]");
      if (jobEl && String(st.job_id) === jobEl.dataset.liveJob) updateJobProgress(jobEl, st);
    });
    source.addEventListener("job", (ev) => {
      const data = JSON.parse(ev.data);
      const jobEl = live("[data-live-job]");
      const ended = data.event && data.event.topic === "job.ended";  // its usage is on record
      if (live("[data-live-jobs]") || (jobEl && String(data.id) === jobEl.dataset.liveJob)
        || (ended && live("[data-live-usage]")) || live("[data-live-admin-machines]")) scheduleRefresh();
    });
    // A fabrication request between shops changed (a message arrived, a delivery was tried):
    // the requests list, or that request's page, refetches. The last action's flash message
    // would be stale: it goes.
    source.addEventListener("request", (ev) => {
      const data = JSON.parse(ev.data);
      const requestEl = live("[data-live-request]");
      if (!live("[data-live-requests]") && !(requestEl && data.id === requestEl.dataset.liveRequest)) return;
      if (window.location.search) window.history.replaceState(null, "", window.location.pathname);
      scheduleRefresh();
    });
    // Machine time changed (a booking, a maintenance block; 0: closures and hours, which the
    // maintenance log does not show).
    source.addEventListener("booking", (ev) => {
      const data = JSON.parse(ev.data);
      if (live("[data-live-bookings]") || (data.machine_id && machinePage(data.machine_id))) scheduleRefresh();
    });
    // A message for this person was recorded: the messages page and the bookings list (its
    // messages) show it; the badge is notifications.js's.
    source.addEventListener("notification", () => {
      if (live("[data-live-notifications]") || live("[data-live-bookings]")) scheduleRefresh();
    });
  }
})();
