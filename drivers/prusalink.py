"""PrusaLink driver: runs programs on a Prusa printer (MK4, XL, MINI, MK3 with a Pi) over
PrusaLink's v1 REST API.

Status is polled (`GET /api/v1/status`, and `GET /api/v1/job` while a print runs); the
firmware and server versions come from `GET /api/version` at connect. A program is uploaded
with `PUT /api/v1/files/{storage}/{name}` and the header `Print-After-Upload: ?1`, so the
printer starts it as soon as it is stored; pause and resume are `PUT /api/v1/job/{id}/pause`
and `/resume`, stop is `DELETE /api/v1/job/{id}`. PrusaLink authenticates with HTTP digest
(the user and password shown on the printer's screen) or with an `X-Api-Key` header.

PrusaLink's printer states (IDLE, BUSY, PRINTING, PAUSED, FINISHED, STOPPED, ERROR,
ATTENTION, READY) become our machine states (see `machine_state`), with the message the
printer gives (`status_printer.message`) shown to operators. httpx errors are translated at
the boundary into MachineOffline, AuthFailed and DriverError.

A print is followed by its file name, not by PrusaLink's job id: a PrusaLink that restarts
mid-print may number the job afresh. When PrusaLink stops answering, the machine is OFFLINE
with the reason and the driver keeps polling, backing off; a print it follows is then judged
by what PrusaLink says once it answers again.

`pyprusalink` (Home Assistant's client) is not used: it is not among the packages this
project can install, and it has no upload; the v1 API is small enough to speak with httpx.
PrusaLink's v1 API takes no G-code commands, so `send` refuses them, and it has no
emergency stop: `emergency_stop` stops the print, which is the most it offers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from drivers.base import (
    AuthFailed,
    Driver,
    DriverError,
    EventKind,
    MachineOffline,
    MachineState,
    Program,
    Progress,
    ProtocolError,
    Temperature,
)
from drivers.http_host import (
    check_ready_to_start,
    display_url,
    host_url,
    program_bytes,
    safe_upload_name,
    stop_task,
    translate_http_error,
)

log = logging.getLogger(__name__)


class _QuietPolls(logging.Filter):
    """Drop httpx's INFO line for each status poll (two a second per printer, every second
    of the day); every other request is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (
            record.levelno <= logging.INFO
            and len(args) >= 2
            and args[0] == "GET"
            and str(args[1]).endswith(("/api/v1/status", "/api/v1/job"))
        )


if not any(isinstance(f, _QuietPolls) for f in logging.getLogger("httpx").filters):
    logging.getLogger("httpx").addFilter(_QuietPolls())

#: PrusaLink's printer states as our machine states.
STATE_MAP: dict[str, MachineState] = {
    "IDLE": MachineState.IDLE,
    "READY": MachineState.IDLE,  # "ready to print": set on the printer by an operator
    "FINISHED": MachineState.IDLE,  # the last print ended; the printer takes a new one
    "STOPPED": MachineState.IDLE,  # the last print was stopped
    "BUSY": MachineState.RUNNING,  # homing, a transfer, a menu action: not free to print
    "PRINTING": MachineState.RUNNING,
    "PAUSED": MachineState.PAUSED,
    "ATTENTION": MachineState.PAUSED,  # waits for an operator (filament runout, a prompt)
    "ERROR": MachineState.ERROR,
}

#: What each state says to an operator, before the printer's own message.
STATE_WORDS: dict[str, str] = {
    "IDLE": "ready",
    "READY": "ready (set ready on the printer)",
    "FINISHED": "ready (the last print finished)",
    "STOPPED": "ready (the last print was stopped)",
    "BUSY": "busy",
    "PRINTING": "printing",
    "PAUSED": "paused",
    "ATTENTION": "needs attention at the printer",
    "ERROR": "printer error",
}

#: Upload refusals, by HTTP status, in words an operator can act on.
UPLOAD_REFUSALS: dict[int, str] = {
    400: "PrusaLink refused the file name or the request",
    404: "PrusaLink has no such storage",
    409: "a file of this name is already on the printer, or the printer is not ready to print",
    411: "PrusaLink wanted the file's length",
    413: "the printer's storage has no room for the file",
    415: "PrusaLink does not take this kind of file (only G-code for FDM printers)",
    507: "the printer's storage is full",
}


def machine_state(printer_state: str) -> MachineState:
    """Return our machine state for one of PrusaLink's printer states (unknown: ERROR)."""
    return STATE_MAP.get(printer_state.upper(), MachineState.ERROR)


def state_message(printer_state: str, printer_message: str = "", file: str | None = None) -> str:
    """Return the line operators read for a PrusaLink state and the printer's message."""
    key = printer_state.upper()
    words = STATE_WORDS.get(key, f"unknown PrusaLink state {printer_state!r}")
    if key in ("PRINTING", "PAUSED", "ATTENTION") and file:
        words = f"{words} {file}" if key != "ATTENTION" else f"{words} ({file})"
    if printer_message and printer_message.upper() != "OK":
        words = f"{words}: {printer_message}"
    return words


def _prusalink_message(response: httpx.Response) -> str:
    """Return the readable part of a PrusaLink error reply (JSON title/message, or text)."""
    with contextlib.suppress(ValueError):
        data = response.json()
        if isinstance(data, dict):
            parts = [str(data.get(k)) for k in ("title", "message", "text") if data.get(k)]
            if parts:
                return ": ".join(dict.fromkeys(parts))
    return " ".join(response.text.split())[:200]


def translate_error(exc: BaseException, *, url: str, action: str) -> DriverError:
    """Turn an httpx exception into a DriverError an operator can act on."""
    if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (401, 403):
        return AuthFailed(
            f"PrusaLink refused the credentials (HTTP {exc.response.status_code}) while "
            f"{action}: set the machine's username and password to those on the printer's "
            "screen (Settings > Network > PrusaLink), or its api_key"
        )
    return translate_http_error(
        exc,
        host="PrusaLink",
        url=url,
        action=action,
        timeout_hint="check that the printer is on and on the network",
        detail=_prusalink_message,
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One poll of PrusaLink: the printer and, if one is under way, its job."""

    printer_state: str
    printer_message: str = ""
    printer: Mapping[str, Any] = field(default_factory=dict)
    job_id: int | None = None
    job_file: str | None = None  # the job's file name (its last path part)
    job_state: str | None = None
    progress: float | None = None  # percent
    time_printing: float | None = None  # seconds
    time_remaining: float | None = None  # seconds


class PrusaLinkDriver(Driver):
    """A Prusa printer behind PrusaLink, driven over its v1 REST API."""

    name = "prusalink"
    secret_fields = frozenset({"api_key", "password"})

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        parts = host_url(self.settings.get("url"), "PrusaLink", "http(s)://host[:port]")
        self._url = parts.geturl().rstrip("/")
        self._display = display_url(self._url)
        self._username = str(self.settings.get("username") or "")
        self._password = str(self.settings.get("password") or "")
        self._api_key = str(self.settings.get("api_key") or "")
        if not self._api_key and not (self._username and self._password):
            raise DriverError(
                "PrusaLink needs its username and password (shown on the printer's screen) "
                "or an api_key"
            )
        self._storage = str(self.settings.get("storage") or "").strip("/")
        self._timeout_s = float(self.settings.get("timeout_s") or 10.0)
        self._poll_interval_s = float(self.settings.get("poll_interval_s") or 1.0)
        self._max_backoff_s = float(self.settings.get("max_backoff_s") or 30.0)

        self._http: httpx.AsyncClient | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._refresh_lock = asyncio.Lock()  # one poll at a time: each change is seen once
        self._changed = asyncio.Condition()
        self._snapshot: Snapshot | None = None
        self._online = False

        self._job_file: str | None = None
        self._lines_total = 0
        self._cancel_requested = False
        self._last_state: str | None = None
        self._last_ended: str | None = None
        self._last_progress: Progress | None = None
        self._grace_until = 0.0  # until then a just-uploaded print may not have begun
        self._version: dict[str, Any] = {}

    # -- public API beyond the Driver interface --------------------------------

    @property
    def job_file(self) -> str | None:
        """Return the PrusaLink file name of the print this driver follows, if any."""
        return self._job_file

    async def attach(
        self, file_name: str | None = None, *, lines_total: int = 0
    ) -> Progress | None:
        """Follow the print PrusaLink is running (e.g. after our restart); return its progress.

        With file_name, follow only that file. Return None when the printer is not printing
        it. When PrusaLink says the last print finished and no job is under way, a follower
        that named its file is told FINISHED at once (a supervisor down at the end learns of
        it); PrusaLink forgets the file of a finished job, so this is judged by the state.
        """
        snap = self._snapshot
        if snap is None:
            return None
        active = snap.printer_state in ("PRINTING", "PAUSED", "ATTENTION") and snap.job_file
        if active:
            if file_name is not None and snap.job_file != file_name:
                return None
            self._follow_file(str(snap.job_file), lines_total, snap.printer_state)
            log.info("following the print of %s on PrusaLink at %s", snap.job_file, self._display)
            self._refresh_status(snap)
            return self._progress(snap)
        if (
            file_name is not None
            and snap.job_file is None
            and snap.printer_state == "FINISHED"
            and file_name != self._last_ended
        ):
            self._follow_file(file_name, lines_total, None)
            progress = Progress(lines_total, lines_total, lines_total, percent_hint=100.0)
            self._last_progress = progress
            self._finish_job(EventKind.FINISHED, reason="")
            return progress
        return None

    # -- the Driver interface ----------------------------------------------------

    async def connect(self) -> None:
        """Reach PrusaLink, read its version and the printer's status, and start polling."""
        await self._stop_polling()
        self._set_status(state=MachineState.CONNECTING, message=f"connecting to {self._display}")
        if self._http is None:
            headers = {"X-Api-Key": self._api_key} if self._api_key else {}
            auth = (
                httpx.DigestAuth(self._username, self._password)
                if self._username and self._password and not self._api_key
                else None
            )
            self._http = httpx.AsyncClient(
                base_url=self._url,
                headers=headers,
                auth=auth,
                timeout=self._timeout_s,
                trust_env=False,
            )
        try:
            version = await self._request("GET", "/api/version", "reading the version")
            self._version = version if isinstance(version, dict) else {}
            info = await self._request("GET", "/api/v1/info", "reading the printer info")
            if not self._storage:
                self._storage = await self._choose_storage()
            await self._refresh()
        except DriverError as exc:
            self._set_status(state=MachineState.OFFLINE, message=str(exc))
            raise
        self._online = True
        self._poll_task = asyncio.create_task(self._poll_loop(), name=f"prusalink {self._url}")
        log.info(
            "connected to %s at %s (printer %s, firmware %s)",
            self._version.get("text") or "PrusaLink",
            self._display,
            (info or {}).get("name") if isinstance(info, dict) else None,
            self._version.get("firmware"),
        )

    async def _choose_storage(self) -> str:
        """Return the first writable storage PrusaLink lists ('local' on an MK3, 'usb' on
        an MK4), or 'local' when it lists none."""
        try:
            listed = await self._request("GET", "/api/v1/storage", "listing the storages")
        except DriverError as exc:
            if isinstance(exc, AuthFailed | MachineOffline):
                raise
            return "local"
        for storage in (listed or {}).get("storage_list") or []:
            if storage.get("available") and not storage.get("read_only") and storage.get("path"):
                return str(storage["path"]).strip("/")
        return "local"

    async def _stop_polling(self) -> None:
        task, self._poll_task = self._poll_task, None
        await stop_task(task)

    async def close(self) -> None:
        """Stop following PrusaLink; a running print carries on there."""
        await self._stop_polling()
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()
        if self._status.state is not MachineState.OFFLINE:
            self._set_status(state=MachineState.OFFLINE, message="not connected")

    async def start(self, program: Program) -> None:
        """Upload the program, have PrusaLink print it, and return once it prints."""
        check_ready_to_start(self._status)
        name = safe_upload_name(program)
        data = await program_bytes(program)
        path = f"/api/v1/files/{quote(self._storage)}/{quote(name)}"
        async with self._refresh_lock:
            try:
                await self._request(
                    "PUT",
                    path,
                    f"uploading {name}",
                    content=data,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Print-After-Upload": "?1",
                        "Overwrite": "?0",
                    },
                    upload=True,
                )
            except DriverError:
                log.warning("PrusaLink at %s refused %s", self._display, name)
                raise
            self._follow_file(name, len(program.lines), None)
            self._grace_until = time.monotonic() + max(5.0, 3 * self._poll_interval_s)
        try:
            await self._wait_for(
                f"start printing {name}",
                lambda s: (
                    s.job_file == name
                    and s.printer_state in ("PRINTING", "PAUSED", "ATTENTION", "FINISHED")
                ),
                # A short program may be over before the first poll sees it printing.
                accept=lambda s: self._job_file is None and self._last_ended == name,
            )
        except DriverError:
            if self._job_file == name:
                self._job_file = None
            raise
        log.info("uploaded %s as %s to %s and started it", program.name, name, self._display)
        self._emit(EventKind.STARTED, file=name, program=program.name)

    async def pause(self) -> None:
        """Pause the print; return once PrusaLink reports it paused."""
        job_id = self._current_job_id("pause")
        await self._request("PUT", f"/api/v1/job/{job_id}/pause", "pausing the print")
        await self._wait_for("pause", lambda s: s.printer_state != "PRINTING")

    async def resume(self) -> None:
        """Resume the paused print; return once PrusaLink prints again."""
        job_id = self._current_job_id("resume")
        await self._request("PUT", f"/api/v1/job/{job_id}/resume", "resuming the print")
        await self._wait_for("resume", lambda s: s.printer_state not in ("PAUSED", "ATTENTION"))

    async def cancel(self) -> None:
        """Stop the print; return once PrusaLink has stopped it."""
        job_id = self._current_job_id("cancel")
        self._cancel_requested = True
        try:
            await self._request("DELETE", f"/api/v1/job/{job_id}", "stopping the print")
            await self._wait_for(
                "stop the print",
                lambda s: s.printer_state not in ("PRINTING", "PAUSED", "ATTENTION"),
            )
        except DriverError:
            self._cancel_requested = False
            raise

    async def emergency_stop(self) -> None:
        """Stop the print at once: PrusaLink's API has no emergency stop (M112) to send."""
        snap = self._snapshot
        if snap is not None and snap.job_id is not None:
            with contextlib.suppress(DriverError):
                await self._request(
                    "DELETE", f"/api/v1/job/{snap.job_id}", "stopping the print (emergency)"
                )
        if self._job_file is not None:
            self._finish_job(
                EventKind.FAILED,
                reason="emergency stop: PrusaLink has no emergency stop, so the print was "
                "stopped; use the printer's reset button if it must halt now",
            )

    async def reset(self) -> str:
        """Reconnect to PrusaLink; a printer in ERROR is recovered at the printer itself."""
        await self.close()
        await self.connect()
        if self._status.state is MachineState.ERROR:
            return f"reconnected; the printer still reports an error: {self._status.message}"
        return "reconnected to PrusaLink"

    async def send(self, command: str) -> list[str]:
        """Refuse: PrusaLink's v1 API runs files, not single G-code commands."""
        word = command.strip().split()[0].upper() if command.strip() else "the command"
        raise DriverError(
            f"{word} not sent: PrusaLink's API takes no G-code commands; "
            "print a file, or use the printer's own screen"
        )

    # -- HTTP ------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise DriverError(f"not connected to PrusaLink at {self._display}: connect first")
        return self._http

    async def _request(
        self, method: str, path: str, action: str, *, upload: bool = False, **kwargs: Any
    ) -> Any:
        client = self._client()
        try:
            response = await client.request(method, path, **kwargs)
            refused = response.status_code >= 400 and response.status_code not in (401, 403)
            if (upload and refused and response.status_code < 500) or response.status_code == 507:
                detail = _prusalink_message(response)
                why = UPLOAD_REFUSALS.get(response.status_code, "PrusaLink refused the upload")
                raise DriverError(
                    f"PrusaLink refused the upload (HTTP {response.status_code}): {why}"
                    f"{'; it said: ' + detail if detail else ''}"
                )
            response.raise_for_status()
            if response.status_code == 204 or not response.content:
                return None
            if "json" not in response.headers.get("content-type", ""):
                return None
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise translate_error(exc, url=self._display, action=action) from exc

    # -- polling ---------------------------------------------------------------------

    async def _fetch(self) -> Snapshot:
        status = await self._request("GET", "/api/v1/status", "reading the status")
        if not isinstance(status, dict) or not isinstance(status.get("printer"), dict):
            raise ProtocolError(f"PrusaLink at {self._display} sent a status without a printer")
        printer = status["printer"]
        job = status.get("job") if isinstance(status.get("job"), dict) else None
        message = ""
        sp = printer.get("status_printer")
        if isinstance(sp, dict) and sp.get("message") and not sp.get("ok", False):
            message = str(sp["message"])
        job_file: str | None = None
        job_state: str | None = None
        if job is not None:
            detail = await self._request("GET", "/api/v1/job", "reading the job")
            if isinstance(detail, dict):
                raw_file = detail.get("file")
                file: dict[str, Any] = raw_file if isinstance(raw_file, dict) else {}
                name = str(file.get("name") or file.get("display_name") or "")
                path = str(file.get("path") or "")
                job_file = name or path.rsplit("/", 1)[-1] or None
                job_state = str(detail.get("state") or "") or None

        def num(values: Mapping[str, Any] | None, key: str) -> float | None:
            value = (values or {}).get(key)
            return float(value) if isinstance(value, int | float) else None

        return Snapshot(
            printer_state=str(printer.get("state") or "").upper(),
            printer_message=message,
            printer=printer,
            job_id=int(job["id"]) if job is not None and job.get("id") is not None else None,
            job_file=job_file,
            job_state=job_state,
            progress=num(job, "progress"),
            time_printing=num(job, "time_printing"),
            time_remaining=num(job, "time_remaining"),
        )

    async def _refresh(self) -> Snapshot:
        async with self._refresh_lock:
            snap = await self._fetch()
            self._snapshot = snap
            self._refresh_status(snap)
        async with self._changed:
            self._changed.notify_all()
        return snap

    async def _poll_loop(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(
                self._poll_interval_s
                if failures == 0
                else min(self._poll_interval_s * 2**failures, self._max_backoff_s)
            )
            try:
                await self._refresh()
            except AuthFailed as exc:
                failures = min(failures + 1, 8)
                self._online = False
                self._set_status(state=MachineState.OFFLINE, message=str(exc), temperatures={})
            except DriverError as exc:
                failures = min(failures + 1, 8)
                if self._online:
                    log.warning("PrusaLink at %s: %s", self._display, exc)
                self._online = False
                delay = min(self._poll_interval_s * 2**failures, self._max_backoff_s)
                self._set_status(
                    state=MachineState.OFFLINE,
                    message=f"{exc}; retrying in {delay:.1f} s",
                    temperatures={},
                )
                async with self._changed:
                    self._changed.notify_all()
            else:
                if not self._online:
                    log.info("PrusaLink at %s answers again", self._display)
                self._online = True
                failures = 0

    # -- status ----------------------------------------------------------------------

    def _follow_file(self, name: str, lines_total: int, state: str | None) -> None:
        self._job_file = name
        self._lines_total = lines_total
        self._cancel_requested = False
        self._last_state = state
        self._last_progress = None

    def _current_job_id(self, action: str) -> int:
        snap = self._snapshot
        if snap is None or snap.job_id is None:
            raise DriverError(f"nothing to {action}: the printer runs no job")
        return snap.job_id

    def _refresh_status(self, snap: Snapshot) -> None:
        """Make the snapshot the status, and turn the followed print's changes into events."""
        if self._job_file is not None:
            self._follow(snap)
        printer = snap.printer

        def num(key: str) -> float | None:
            value = printer.get(key)
            return float(value) if isinstance(value, int | float) else None

        temperatures: dict[str, Temperature] = {}
        for key, name in (("nozzle", "T"), ("bed", "B")):
            actual = num(f"temp_{key}")
            if actual is not None:
                temperatures[name] = Temperature(actual, num(f"target_{key}"))
        position = {
            axis.upper(): value for axis in "xyz" if (value := num(f"axis_{axis}")) is not None
        }
        self._set_status(
            state=machine_state(snap.printer_state),
            message=state_message(snap.printer_state, snap.printer_message, snap.job_file),
            temperatures=temperatures,
            position=position,
            firmware=self._version.get("firmware") or None,
            progress=self._progress(snap),
            extra={
                "prusalink_state": snap.printer_state,
                "printer_message": snap.printer_message,
                "job_id": snap.job_id,
                "job_file": snap.job_file,
                "following": self._job_file,
                "storage": self._storage,
                "server": self._version.get("text"),
            },
        )

    def _follow(self, snap: Snapshot) -> None:
        state = snap.printer_state
        if snap.job_file == self._job_file:
            self._last_progress = self._progress(snap) or self._last_progress
        if state == "ERROR":
            self._finish_job(
                EventKind.FAILED,
                reason=f"printer error: {snap.printer_message or 'PrusaLink gave no message'}",
            )
            return
        if snap.job_file is not None and snap.job_file != self._job_file:
            self._finish_job(
                EventKind.FAILED,
                reason=f"the printer is printing another file ({snap.job_file}), "
                f"not {self._job_file}",
            )
            return
        # Just uploaded: a state left from the last print (FINISHED, STOPPED) or an idle
        # printer is not this print's end until PrusaLink has had time to begin it.
        fresh = self._last_state is None and time.monotonic() < self._grace_until
        if state in ("PRINTING", "PAUSED", "ATTENTION", "BUSY"):
            if snap.job_file is None:
                return  # the job's details are not there yet, or BUSY opening the file
        elif fresh:
            return
        elif state == "FINISHED":
            self._finish_job(EventKind.FINISHED, reason="")
            return
        elif state == "STOPPED":
            reason = "cancelled" if self._cancel_requested else "stopped at the printer"
            self._finish_job(EventKind.CANCELLED, reason=reason)
            return
        else:
            self._finish_job(
                EventKind.FAILED,
                reason=f"PrusaLink is no longer printing {self._job_file} "
                f"(printer state: {state}); the printer was restarted or the print was "
                "removed",
            )
            return
        before, self._last_state = self._last_state, state
        held = ("PAUSED", "ATTENTION")
        if state in held and before not in held and before is not None:
            self._emit(EventKind.PAUSED, file=self._job_file, reason=snap.printer_message)
        elif state == "PRINTING" and before in held:
            self._emit(EventKind.RESUMED, file=self._job_file)

    def _finish_job(self, kind: EventKind, *, reason: str) -> None:
        progress = self._last_progress or Progress(self._lines_total)
        if kind is EventKind.FINISHED:
            total = self._lines_total
            progress = Progress(total, total, total, progress.started_at, percent_hint=100.0)
        # Readers of the status (the supervisor records the job's end with it) see the
        # print's last progress first: PrusaLink forgets the job once it has ended.
        self._set_status(progress=progress)
        file, self._job_file = self._job_file, None
        self._last_ended = file
        self._cancel_requested = False
        if kind is EventKind.FINISHED:
            log.info("print of %s finished on %s", file, self._display)
        else:
            log.warning("print of %s ended (%s) on %s: %s", file, kind, self._display, reason)
        self._emit(kind, file=file, reason=reason, progress=progress)

    def _progress(self, snap: Snapshot) -> Progress | None:
        if snap.job_file is None or snap.progress is None:
            return None
        fraction = max(0.0, min(snap.progress / 100.0, 1.0))
        lines_total = self._lines_total if snap.job_file == self._job_file else 0
        acked = round(lines_total * fraction)
        printing = snap.time_printing or 0.0
        return Progress(
            lines_total=lines_total,
            lines_sent=acked,
            lines_acked=acked,
            started_at=time.time() - printing if printing else None,
            percent_hint=100.0 * fraction,
            eta_s_hint=snap.time_remaining,
        )

    async def _wait_for(
        self,
        what: str,
        done: Callable[[Snapshot], bool],
        *,
        accept: Callable[[Snapshot], bool] | None = None,
    ) -> None:
        """Poll until done(snapshot) holds; fail on a printer error or after a timeout."""
        timeout = max(30.0, 3 * self._timeout_s)
        deadline = time.monotonic() + timeout
        while True:
            snap = await self._refresh()
            if done(snap) or (accept is not None and accept(snap)):
                return
            if snap.printer_state == "ERROR":
                raise DriverError(f"could not {what}: {self._status.message}")
            if time.monotonic() > deadline:
                raise DriverError(
                    f"PrusaLink did not {what} within {timeout:.0f} s ({self._status.message})"
                )
            await asyncio.sleep(min(0.2, self._poll_interval_s))
