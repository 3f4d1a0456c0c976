// A machine's booking calendar: the vendored EventCalendar, fed by the server.
//
// Times on the calendar are the shop's wall-clock time (the server sends them without an
// offset), since opening hours and closures are set in the shop's zone; the member's own zone
// is shown beside it. A drag over free time posts to POST /api/v1/bookings, whose rules decide;
// a refusal shows the server's words. The events follow the server's event stream (`booking`).
(function () {
  "use strict";
  const el = document.getElementById("calendar");
  if (!el || !window.EventCalendar) return;
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
  const machineId = Number(el.dataset.machineId);
  const shopTz = el.dataset.shopTz;
  const ownTz = Intl.DateTimeFormat().resolvedOptions().timeZone;
  const errorBox = document.getElementById("calendar-error");
  const flash = document.getElementById("flash");

  function say(text, isError) {
    errorBox.hidden = !isError;
    flash.hidden = !!isError;
    (isError ? errorBox : flash).textContent = text;
  }

  // The offset of `tz` at the instant `ms`, in milliseconds (Intl knows every zone's rules).
  function offsetMs(tz, ms) {
    const parts = {};
    new Intl.DateTimeFormat("en-US", {
      timeZone: tz, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit",
    }).formatToParts(new Date(ms)).forEach((p) => { parts[p.type] = p.value; });
    const wall = Date.UTC(+parts.year, +parts.month - 1, +parts.day, +parts.hour, +parts.minute, +parts.second);
    return wall - Math.floor(ms / 1000) * 1000;
  }

  // "2026-12-02T10:00:00" on the shop's clock -> the moment, as an ISO string in UTC.
  function shopToUtc(floating) {
    const [d, t] = floating.split("T");
    const [y, mo, da] = d.split("-").map(Number);
    const [h, mi] = (t || "00:00").split(":").map(Number);
    const wall = Date.UTC(y, mo - 1, da, h, mi);
    let ms = wall - offsetMs(shopTz, wall);
    ms = wall - offsetMs(shopTz, ms);  // again, in case the first guess crossed a DST change
    return new Date(ms).toISOString();
  }

  const fmtShop = new Intl.DateTimeFormat("en-GB", { timeZone: shopTz, weekday: "short", day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit" });
  const fmtOwn = new Intl.DateTimeFormat("en-GB", { timeZone: ownTz, weekday: "short", day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit", timeZoneName: "short" });
  const fmtShopTime = new Intl.DateTimeFormat("en-GB", { timeZone: shopTz, hour: "2-digit", minute: "2-digit" });
  const differentZone = offsetMs(shopTz, Date.now()) !== offsetMs(ownTz, Date.now());

  function when(startUtc, endUtc) {
    const a = new Date(startUtc), b = new Date(endUtc);
    let text = `${fmtShop.format(a)}–${fmtShopTime.format(b)} (${shopTz})`;
    if (differentZone) text += `; your time ${fmtOwn.format(a)}`;
    return text;
  }

  const own = document.getElementById("own-zone");
  if (own) {
    own.hidden = false;
    own.textContent = differentZone
      ? ` Your browser's zone is ${ownTz}: the shop's ${fmtShopTime.format(new Date())} is your ${new Intl.DateTimeFormat("en-GB", { timeZone: ownTz, hour: "2-digit", minute: "2-digit" }).format(new Date())} now.`
      : ` Your browser is in the same zone (${ownTz}).`;
  }

  async function api(method, url, body) {
    const resp = await fetch(url, {
      method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf(), Accept: "application/json" },
      body: body ? JSON.stringify(body) : undefined,
    });
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      const detail = data && data.detail ? data.detail : resp.statusText;
      throw new Error(typeof detail === "string" ? detail : detail.map((d) => d.msg || String(d)).join("; "));
    }
    return data;
  }

  const hhmm = { hour: "2-digit", minute: "2-digit", hour12: false };
  const slot = Number(el.dataset.slotMinutes) || 30;
  const calendar = EventCalendar.create(el, {
    view: window.matchMedia("(max-width: 700px)").matches ? "timeGridDay" : "timeGridWeek",
    date: el.dataset.date,
    firstDay: 1,
    locale: "en-GB",
    headerToolbar: { start: "prev,next today", center: "title", end: "timeGridDay,timeGridWeek,dayGridMonth" },
    buttonText: (text) => ({ ...text, today: "Today", dayGridMonth: "Month", timeGridWeek: "Week", timeGridDay: "Day" }),
    allDaySlot: false,
    nowIndicator: true,
    slotDuration: { minutes: slot },
    slotMinTime: el.dataset.slotMin,
    slotMaxTime: el.dataset.slotMax,
    slotLabelFormat: hhmm,
    eventTimeFormat: hhmm,
    height: "auto",
    selectable: true,
    editable: false,
    eventStartEditable: false,
    eventDurationEditable: false,
    selectBackgroundColor: "#86efac",
    eventSources: [{
      events: async (info) => {
        const q = new URLSearchParams({ start: info.startStr, end: info.endStr });
        const resp = await fetch(`${el.dataset.eventsUrl}?${q}`, { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (!resp.ok) throw new Error(`events: ${resp.status}`);
        const events = await resp.json();
        el.dataset.eventsLoaded = String(events.length);  // what the page's tests wait for
        return events;
      },
    }],
    select: async (info) => {
      calendar.unselect();
      if (info.allDay) {  // a day in the month view: open that day to choose the hours
        calendar.setOption("view", "timeGridDay");
        calendar.setOption("date", info.startStr.slice(0, 10));
        return;
      }
      const start = shopToUtc(info.startStr), end = shopToUtc(info.endStr);
      try {
        await api("POST", "/api/v1/bookings", { machine_id: machineId, start, end });
        say(`Booked ${when(start, end)}.`, false);
      } catch (err) {
        say(`Not booked: ${err.message}`, true);
      }
      calendar.refetchEvents();
    },
    dateClick: (info) => {
      if (info.allDay && info.view.type === "dayGridMonth") {
        calendar.setOption("view", "timeGridDay");
        calendar.setOption("date", info.dateStr.slice(0, 10));
      }
    },
    eventClick: (info) => showDetail(info.event),
    eventDidMount: (info) => {
      const p = info.event.extendedProps;
      if (p.start_utc) info.el.title = `${info.event.title}: ${when(p.start_utc, p.end_utc)}`;
      if (p.booking_id != null) info.el.dataset.bookingId = p.booking_id;
      if (p.kind) info.el.dataset.kind = p.kind;
    },
  });

  const detail = document.getElementById("booking-detail");
  let shown = null;
  function showDetail(ev) {
    const p = ev.extendedProps;
    if (!p.start_utc) return;
    shown = p;
    document.getElementById("detail-title").textContent = ev.title;
    document.getElementById("detail-when").textContent = when(p.start_utc, p.end_utc);
    document.getElementById("detail-cancel").hidden = !p.can_cancel;
    detail.hidden = false;
  }
  document.getElementById("detail-close").addEventListener("click", () => { detail.hidden = true; });
  document.getElementById("detail-cancel").addEventListener("click", async () => {
    if (!shown || shown.booking_id == null) return;
    try {
      await api("DELETE", `/api/v1/bookings/${shown.booking_id}`);
      say(`Booking ${shown.booking_id} cancelled.`, false);
      detail.hidden = true;
    } catch (err) {
      say(`Not cancelled: ${err.message}`, true);
    }
    calendar.refetchEvents();
  });

  // Live: the server's event stream says when a machine's booked time changed. The page's one
  // stream: notifications.js keeps the unread badge live on it too.
  const source = window.microfactoryStream || new EventSource("/api/v1/machines/stream");
  window.microfactoryStream = source;
  let timer = null;
  source.addEventListener("booking", (msg) => {
    const data = JSON.parse(msg.data);
    if (data.machine_id !== 0 && data.machine_id !== machineId) return;
    clearTimeout(timer);
    timer = setTimeout(() => calendar.refetchEvents(), 200);  // one refetch for a burst
  });
  window.addEventListener("pagehide", () => source.close());
  window.microfactoryCalendar = calendar;  // for the browser tests and the console
})();
