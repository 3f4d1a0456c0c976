"""OctoPrint driver: runs programs on a printer behind an OctoPrint server, through octorest.

octorest 0.4 is synchronous and has known defects (docs/PROTOCOLS.md); this module works
around each of them in `OctoPrintClient` and translates its errors at the boundary:

- every call runs in a worker thread (`asyncio.to_thread`), never on the event loop;
- requests time out (`TimeoutSession`); octorest sets no timeout at all;
- a server under a sub-path (http://host/octoprint/) works; octorest drops the path;
- HTTP errors carry their status code (`OctoPrintHTTPError`) and become `AuthFailed`,
  `MachineOffline` or `DriverError`; octorest raises a bare `RuntimeError`;
- `upload(select=True, print=True)` drops both flags, so we upload, then `select(print=True)`;
- `wizard()` calls the wrong path; nothing here needs it and the client refuses it.

A background task polls OctoPrint (`GET /api/job`, `GET /api/printer`), keeps the status
snapshot fresh, and turns state changes of the print it follows into events. When
OctoPrint is unreachable the machine is OFFLINE with the reason, and the poll backs off
and recovers by itself when OctoPrint returns (so this driver never emits DISCONNECTED).
After a restart of ours, `attach()` picks up the print OctoPrint kept running.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin

import requests
from octorest import OctoRest
from requests.adapters import HTTPAdapter

from drivers.base import (
    AuthFailed,
    Driver,
    DriverError,
    EventKind,
    MachineBusy,
    MachineOffline,
    MachineState,
    Program,
    Progress,
    ProtocolError,
    Status,
    Temperature,
)
from drivers.http_host import check_ready_to_start, display_url, host_url, safe_upload_name
from drivers.planner import MachineLimits

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Commands that may be sent while a print runs: they only report, never move or heat.
SAFE_WHILE_PRINTING = frozenset({"M105", "M114", "M115", "M119", "M27", "M31", "M117"})

# OctoPrint's state strings (octoprint/util/comm.py, getStateString) mapped to ours.
_RUNNING_TEXTS = (
    "Printing",
    "Starting",
    "Sending file to SD",
    "Transferring file to SD",
    "Cancelling",
    "Pausing",
    "Resuming",
    "Finishing",
)
_CONNECTING_TEXTS = ("Opening serial connection", "Detecting serial connection", "Connecting")
_ERROR_TEXTS = ("Error", "Offline after error")


def octoprint_state(text: str) -> MachineState:
    """Map OctoPrint's printer state text to a machine state."""
    if text == "Paused":
        return MachineState.PAUSED
    if text == "Operational":
        return MachineState.IDLE
    if text.startswith(_RUNNING_TEXTS):
        return MachineState.RUNNING
    if text.startswith(_CONNECTING_TEXTS):
        return MachineState.CONNECTING
    if text.startswith(_ERROR_TEXTS):
        return MachineState.ERROR
    return MachineState.OFFLINE  # "Offline", "Closed", "Unknown State (...)"


# ---------------------------------------------------------------------------
# octorest, with its defects worked around


class OctoPrintHTTPError(RuntimeError):
    """OctoPrint answered with an HTTP error; keeps the status code octorest throws away."""

    def __init__(self, status: int, body: str, url: str) -> None:
        super().__init__(f"Reply for {url} was not OK: {body} ({status})")
        self.status = status
        self.body = body
        self.url = url


class _TimeoutAdapter(HTTPAdapter):
    """An adapter that gives every request a timeout unless it brings its own."""

    def __init__(self, timeout: tuple[float, float]) -> None:
        super().__init__()
        self.timeout = timeout

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send the request with our timeout when the caller set none (octorest never does)."""
        return super().send(
            request,
            stream=stream,
            timeout=self.timeout if timeout is None else timeout,
            verify=verify,
            cert=cert,
            proxies=proxies,
        )


class TimeoutSession(requests.Session):
    """A requests session whose requests time out: octorest 0.4 waits forever otherwise."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        # A short connect timeout: a host that is off or unplugged should say so quickly.
        self.timeout = (min(5.0, timeout_s), timeout_s)
        adapter = _TimeoutAdapter(self.timeout)
        self.mount("http://", adapter)
        self.mount("https://", adapter)


def profile_motion_limits(profiles: Any, where: str) -> dict[str, Any] | None:
    """Return motion limits from OctoPrint's current printer profile (its axis speeds)."""
    items = (profiles or {}).get("profiles") if isinstance(profiles, dict) else None
    if not isinstance(items, dict) or not items:
        return None
    chosen = next((p for p in items.values() if isinstance(p, dict) and p.get("current")), None)
    chosen = chosen or next((p for p in items.values() if isinstance(p, dict)), None)
    if chosen is None:
        return None
    stock = MachineLimits.marlin()
    axes = chosen.get("axes") or {}
    speeds = []
    for k, axis in enumerate("xyze"):
        raw = (axes.get(axis) or {}).get("speed")
        try:
            value = float(raw) if raw is not None else 0.0
        except (TypeError, ValueError):
            value = 0.0
        speeds.append(value / 60 if value > 0 else stock.max_feedrate[k])
    limits = replace(stock, max_feedrate=(speeds[0], speeds[1], speeds[2], speeds[3]))
    return {
        **limits.as_dict(),
        "source": f"OctoPrint printer profile {chosen.get('name') or chosen.get('id')!r} "
        f"at {where}",
        "read_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


class OctoPrintClient(OctoRest):
    """octorest's client, fixed: sub-path URLs, timeouts, HTTP status kept on errors."""

    def __init__(self, *, url: str, api_key: str, timeout_s: float) -> None:
        session = TimeoutSession(timeout_s)
        session.headers["X-Api-Key"] = api_key
        # No apikey argument: octorest would then make a blocking request in the constructor.
        super().__init__(url=url, session=session)
        # octorest keeps only scheme://host and joins absolute paths onto it, so a server
        # behind a reverse proxy at /octoprint/ would get requests at /api/...
        self.url = url.rstrip("/") + "/"

    def _join(self, path: str) -> str:
        return urljoin(self.url, path.lstrip("/"))

    def profiles_raw(self) -> Any:
        """Return GET /api/printerprofiles as sent."""
        return self._get("/api/printerprofiles")

    def _get(self, path: str, params: Any = None) -> Any:
        response = self.session.get(self._join(path), params=params)
        self._check_response(response)
        return response.json()

    def _post(
        self, path: str, data: Any = None, files: Any = None, json: Any = None, ret: bool = True
    ) -> Any:
        response = self.session.post(self._join(path), data=data, files=files, json=json)
        self._check_response(response)
        return response.json() if ret else None

    def _put(
        self, path: str, data: Any = None, files: Any = None, json: Any = None, ret: bool = True
    ) -> Any:
        response = self.session.put(self._join(path), data=data, files=files, json=json)
        self._check_response(response)
        return response.json() if ret else None

    def _patch(
        self, path: str, data: Any = None, files: Any = None, json: Any = None, ret: bool = True
    ) -> Any:
        response = self.session.patch(self._join(path), data=data, files=files, json=json)
        self._check_response(response)
        return response.json() if ret else None

    def _delete(self, path: str) -> None:
        response = self.session.delete(self._join(path))
        self._check_response(response)

    def _check_response(self, response: requests.Response) -> requests.Response:
        if not 200 <= response.status_code < 300:
            raise OctoPrintHTTPError(response.status_code, response.text, response.url)
        return response

    def wizard(self) -> Any:
        """Refuse: octorest 0.4 calls /setup/wizard, which is not OctoPrint's wizard API."""
        raise DriverError("OctoPrint's setup wizard is not available through this driver")

    def finish_wizards(self, handled: Any) -> Any:
        """Refuse, for the same reason as wizard()."""
        raise DriverError("OctoPrint's setup wizard is not available through this driver")

    def upload_and_print(self, name: str, source: Path | bytes) -> str:
        """Upload a G-code file, then select and print it; return its path on OctoPrint."""
        # octorest's upload(select=True, print=True) puts the flags in a JSON body next to
        # the multipart files, and requests drops JSON when files are given: the flags never
        # reach OctoPrint. So: a plain upload, then an explicit select with print.
        with contextlib.ExitStack() as stack:
            fileobj = (
                stack.enter_context(source.open("rb"))
                if isinstance(source, Path)
                else io.BytesIO(source)
            )
            answer = self.upload((name, fileobj), location="local")
        path = str((answer or {}).get("files", {}).get("local", {}).get("path") or name)
        self.select(f"local/{path}", print=True)
        return path

    def printer_or_none(self) -> Any:
        """Return GET /api/printer, or None while the printer is not operational (409)."""
        try:
            return self.printer(exclude=["sd"])
        except OctoPrintHTTPError as exc:
            if exc.status == 409:
                return None
            raise


# ---------------------------------------------------------------------------
# Errors, translated at the boundary

_OCTOREST_ERROR = re.compile(
    r"^Reply for (?P<url>\S+) was not OK: (?P<body>.*) \((?P<status>\d{3})\)$", re.S
)
_TAG = re.compile(r"<[^>]+>")


def _detail(body: str) -> str:
    """Return the readable part of an OctoPrint error body (JSON error or HTML page)."""
    with contextlib.suppress(ValueError):
        data = json.loads(body)
        if isinstance(data, dict) and data.get("error"):
            return str(data["error"])
    text = " ".join(_TAG.sub(" ", body).split())
    return text[:200] or "no details"


def translate_error(exc: BaseException, *, url: str, action: str, secret: str = "") -> DriverError:
    """Turn a requests or octorest exception into a DriverError an operator can act on."""
    err = _translate(exc, url=url, action=action)
    if secret and secret in str(err):
        # Belt and braces: the key travels in a header, but never let it into a message.
        err = type(err)(str(err).replace(secret, "***"))
    return err


def _translate(exc: BaseException, *, url: str, action: str) -> DriverError:
    if isinstance(exc, DriverError):
        return exc
    if isinstance(exc, requests.Timeout):
        return MachineOffline(
            f"OctoPrint at {url} did not answer in time while {action}; "
            "check that the server is running and not overloaded"
        )
    if isinstance(exc, requests.ConnectionError):
        text = str(exc)
        if "Connection refused" in text:
            why = "connection refused (nothing listens there: is OctoPrint running?)"
        elif "Name or service not known" in text or "getaddrinfo" in text:
            why = "the host name does not resolve"
        elif "No route to host" in text or "unreachable" in text:
            why = "no route to the host"
        else:
            why = "the connection failed"
        return MachineOffline(f"cannot reach OctoPrint at {url} while {action}: {why}")
    status: int | None = None
    body = ""
    if isinstance(exc, OctoPrintHTTPError):
        status, body = exc.status, exc.body
    elif isinstance(exc, RuntimeError) and (m := _OCTOREST_ERROR.match(str(exc))):
        status, body = int(m["status"]), m["body"]
    if status is not None:
        detail = _detail(body)
        if status in (401, 403):
            return AuthFailed(
                f"OctoPrint at {url} refused the API key (HTTP {status}) while {action}: "
                "the key is wrong or revoked, or its user lacks the permission; check the key "
                "in the machine's settings (OctoPrint: Settings > Application Keys)"
            )
        if status in (502, 503, 504):
            return MachineOffline(
                f"OctoPrint at {url} is not available (HTTP {status} from its proxy) "
                f"while {action}: {detail}"
            )
        if status == 404:
            return DriverError(
                f"OctoPrint at {url} has no such resource (HTTP 404) while {action}: {detail}; "
                "is the URL right?"
            )
        return DriverError(f"OctoPrint refused {action} (HTTP {status}): {detail}")
    if isinstance(exc, ValueError):  # a JSON decoding error: not OctoPrint, or a broken proxy
        return ProtocolError(
            f"OctoPrint at {url} answered something that is not JSON while {action}"
        )
    return DriverError(f"OctoPrint at {url} failed while {action}: {exc}")


# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What one poll of OctoPrint saw."""

    text: str  # OctoPrint's state text ("Printing", "Operational", ...)
    error: str = ""
    job_file: str | None = None  # path of the selected file on OctoPrint
    completion: float | None = None  # percent, by file position
    print_time_s: float | None = None
    print_time_left_s: float | None = None
    temperatures: Mapping[str, Temperature] = field(default_factory=dict)

    @property
    def state(self) -> MachineState:
        return octoprint_state(self.text)


def _temperatures(printer: Mapping[str, Any] | None) -> dict[str, Temperature]:
    """Name heaters as Marlin does (T, T0.., B, C) so every driver reports the same keys."""
    if not printer:
        return {}
    temps: Mapping[str, Any] = printer.get("temperature") or {}
    tools = sorted(k for k in temps if k.startswith("tool"))
    out: dict[str, Temperature] = {}
    for key, value in temps.items():
        if not isinstance(value, Mapping) or value.get("actual") is None:
            continue
        if key.startswith("tool"):
            name = "T" if len(tools) == 1 else f"T{key[4:]}"
        elif key == "bed":
            name = "B"
        elif key == "chamber":
            name = "C"
        else:
            name = key
        target = value.get("target")
        out[name] = Temperature(float(value["actual"]), None if target is None else float(target))
    return out


def _snapshot(job: Mapping[str, Any], printer: Mapping[str, Any] | None) -> _Snapshot:
    progress = job.get("progress") or {}
    file = (job.get("job") or {}).get("file") or {}

    def num(value: Any) -> float | None:
        return None if value is None else float(value)

    return _Snapshot(
        text=str(job.get("state") or "Offline"),
        error=str(job.get("error") or (printer or {}).get("state", {}).get("error") or ""),
        job_file=file.get("path") or file.get("name"),
        completion=num(progress.get("completion")),
        print_time_s=num(progress.get("printTime")),
        print_time_left_s=num(progress.get("printTimeLeft")),
        temperatures=_temperatures(printer),
    )


class OctoPrintDriver(Driver):
    """A printer behind an OctoPrint server, driven over its REST API."""

    name = "octoprint"
    secret_fields = frozenset({"api_key"})

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self._url = host_url(self.settings.get("url"), "OctoPrint").geturl().rstrip("/") + "/"
        self._display = display_url(self._url)
        self._api_key = str(self.settings.get("api_key") or "")
        if not self._api_key:
            raise DriverError(
                "OctoPrint api_key is not set (OctoPrint: Settings > Application Keys)"
            )
        self._port = str(self.settings.get("printer_port") or "AUTO")
        baudrate = self.settings.get("baudrate")
        self._baudrate = int(baudrate) if baudrate not in (None, "", "AUTO") else None
        self._timeout_s = float(self.settings.get("timeout_s") or 10.0)
        self._poll_interval_s = float(self.settings.get("poll_interval_s") or 1.5)
        # Under the supervisor's 60 s bound on connect(), so that our clearer error wins.
        self._connect_timeout_s = float(self.settings.get("connect_timeout_s") or 45.0)
        self._max_backoff_s = float(self.settings.get("max_backoff_s") or 30.0)

        self._client: OctoPrintClient | None = None
        self._poll_task: asyncio.Task[None] | None = None
        # One refresh at a time, so that each state change is seen, and reported, once.
        self._refresh_lock = asyncio.Lock()
        self._snapshot: _Snapshot | None = None
        self._version: str | None = None
        # The printer profile's axis speeds as motion limits (MachineLimits field names, plus
        # "source" and "read_at"); OctoPrint's profile knows no accelerations.
        self.motion_limits: dict[str, Any] | None = None

        self._job_file: str | None = None  # the print we follow and report on
        self._last_ended: str | None = None  # the last print whose end we reported
        self._lines_total: tuple[str, int] | None = None  # (file, program lines)
        self._cancel_requested = False
        self._estopped = False
        self._want_printer = False  # connect() asked for the printer; reconnect it after outages
        self._reconnect_after_outage = False
        self._unreachable_since: float | None = None
        self._failures = 0
        # Strong references to fire-and-forget tasks, which asyncio holds only weakly.
        self._background: set[asyncio.Task[None]] = set()

    # -- public API beyond the Driver interface --------------------------------

    @property
    def job_file(self) -> str | None:
        """Return the OctoPrint path of the print this driver follows, if any."""
        return self._job_file

    async def attach(
        self, file_name: str | None = None, *, lines_total: int = 0
    ) -> Progress | None:
        """Follow the print OctoPrint is running (e.g. after our restart); return its progress.

        With file_name, follow only that file (the name `job_file` had when we started it).
        Return None when OctoPrint is not printing it. A print of that file that has
        already completed is followed too: its final progress is returned and FINISHED is
        emitted at once, so a supervisor that was down during the end still learns of it.
        """
        async with self._refresh_lock:
            snap = await self._fetch()
            if snap.job_file is None or (file_name is not None and snap.job_file != file_name):
                self._apply(snap)
                return None
            active = snap.state in (MachineState.RUNNING, MachineState.PAUSED)
            completed = (
                file_name is not None
                and snap.state is MachineState.IDLE
                and (snap.completion is not None and snap.completion >= 100.0)
            )
            if completed and snap.job_file == self._last_ended:
                completed = False  # this driver has reported its end already
            if not (active or completed):
                self._apply(snap)
                return None
            self._job_file = snap.job_file
            self._cancel_requested = False
            self._lines_total = (snap.job_file, lines_total)
            log.info("following the print of %s on OctoPrint at %s", snap.job_file, self._display)
            progress = self._progress(snap)
            self._apply(snap)
            return progress

    # -- the Driver interface ----------------------------------------------------

    async def connect(self) -> None:
        """Check the key, have OctoPrint connect the printer, and start following it."""
        if self._client is None:
            self._client = self._new_client()
        self._estopped = False
        self._set_status(state=MachineState.CONNECTING, message=f"connecting to {self._display}")
        try:
            version = await self._call("checking the API key", self._client.get_version)
            self._version = str(version.get("server") or "")
            conn = await self._call("reading the printer connection", self._client.connection_info)
            current = octoprint_state(str(conn.get("current", {}).get("state") or "Offline"))
            if current in (MachineState.OFFLINE, MachineState.ERROR):
                await self._call(
                    f"connecting the printer on port {self._port}",
                    partial(self._client.connect, port=self._port, baudrate=self._baudrate),
                )
            self._want_printer = True
            await self._wait_for(
                "connect the printer",
                lambda s: s.state not in (MachineState.CONNECTING, MachineState.OFFLINE),
                self._connect_timeout_s,
                fail_on_error=True,
            )
        except DriverError as exc:
            self._set_status(state=MachineState.OFFLINE, message=str(exc))
            raise
        log.info("connected to OctoPrint %s at %s", self._version, self._display)
        try:
            profiles = await self._call("reading the printer profile", self._client.profiles_raw)
            self.motion_limits = profile_motion_limits(profiles, self._display)
        except DriverError as exc:
            log.info("no printer profile from OctoPrint at %s: %s", self._display, exc)
        if self._poll_task is None or self._poll_task.done():
            self._poll_task = asyncio.create_task(
                self._poll_loop(), name=f"octoprint-poll {self._display}"
            )

    async def close(self) -> None:
        """Stop following OctoPrint; a running print carries on there."""
        task, self._poll_task = self._poll_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pending in list(self._background):
            pending.cancel()
        client, self._client = self._client, None
        if client is not None:
            client.session.close()
        if self._status.state is not MachineState.OFFLINE:
            self._set_status(state=MachineState.OFFLINE, message="not connected")

    async def start(self, program: Program) -> None:
        """Upload the program, select it and print it; return once OctoPrint prints it."""
        client = self._require_client()
        check_ready_to_start(await self._refresh())
        name = safe_upload_name(program)
        source: Path | bytes = program.source or ("\n".join(program.lines) + "\n").encode()
        path = await self._call(
            f"uploading and starting {name}", partial(client.upload_and_print, name, source)
        )
        log.info("uploaded %s as %s to %s and started it", program.name, path, self._display)
        async with self._refresh_lock:
            deadline = time.monotonic() + max(self._timeout_s, 10.0)
            while True:
                snap = await self._fetch()
                started = snap.job_file == path and (
                    snap.state in (MachineState.RUNNING, MachineState.PAUSED)
                    or (snap.state is MachineState.IDLE and (snap.completion or 0.0) >= 100.0)
                )
                if started:
                    break
                if snap.state is MachineState.ERROR:
                    self._apply(snap)
                    raise DriverError(f"OctoPrint could not start {path}: {snap.error}")
                if time.monotonic() > deadline:
                    self._apply(snap)
                    raise DriverError(
                        f"OctoPrint took {path} but did not start printing it (state: {snap.text})"
                    )
                await asyncio.sleep(0.1)
            self._job_file = path
            self._lines_total = (path, len(program.lines))
            self._cancel_requested = False
            self._emit(EventKind.STARTED, file=path, program=program.name)
            self._apply(snap)

    async def pause(self) -> None:
        """Pause the print; return once OctoPrint reports it paused."""
        client = self._require_client()
        await self._call("pausing the print", client.pause)
        await self._wait_for(
            "pause", lambda s: s.state is not MachineState.RUNNING, self._job_timeout()
        )

    async def resume(self) -> None:
        """Resume the paused print; return once OctoPrint prints again."""
        client = self._require_client()
        await self._call("resuming the print", client.resume)
        await self._wait_for(
            "resume", lambda s: s.state is not MachineState.PAUSED, self._job_timeout()
        )

    async def cancel(self) -> None:
        """Cancel the print; return once OctoPrint has stopped it."""
        client = self._require_client()
        self._cancel_requested = True
        try:
            await self._call("cancelling the print", client.cancel)
        except DriverError:
            self._cancel_requested = False
            raise
        await self._wait_for(
            "cancel",
            lambda s: s.state not in (MachineState.RUNNING, MachineState.PAUSED),
            self._job_timeout(),
        )

    async def emergency_stop(self) -> None:
        """Send M112 through OctoPrint and disconnect the printer; connect() to recover."""
        # Even a driver that never connected tries: the operator pressed the button.
        client = self._client = self._client or self._new_client()
        self._estopped = True
        self._want_printer = False
        self._reconnect_after_outage = False
        errors: list[DriverError] = []
        # Both, whatever happens to the first: a closed serial port also stops most boards.
        for action, call in (
            ("sending M112", partial(client.gcode, "M112")),
            ("disconnecting the printer", client.disconnect),
        ):
            try:
                await self._call(action, call)
            except DriverError as exc:
                log.warning("emergency stop on %s: %s", self._display, exc)
                errors.append(exc)
        if self._job_file is not None:
            self._finish_job(EventKind.FAILED, reason="emergency stop", progress=None)
        self._set_status(
            state=MachineState.ERROR,
            message="emergency stop: M112 sent and the printer disconnected; "
            "check the machine, then connect again",
        )
        if len(errors) == 2:
            raise MachineOffline(
                f"the emergency stop did not reach the printer: {errors[0]}; "
                "use the printer's own stop"
            )

    async def reset(self) -> str:
        """Reconnect the printer through OctoPrint after an emergency stop or a printer error.

        OctoPrint closes and opens the printer's serial port, which resets its board (DTR).
        """
        client = self._client = self._client or self._new_client()
        status = await self._refresh()
        if status.state in (MachineState.RUNNING, MachineState.PAUSED):
            raise MachineBusy(f"the printer is busy: {status.message}; cancel the print first")
        with contextlib.suppress(DriverError):  # already disconnected after an emergency stop
            await self._call("disconnecting the printer", client.disconnect)
        await self.connect()
        return "the printer was reconnected through OctoPrint; it is not homed"

    async def send(self, command: str) -> list[str]:
        """Send one command through OctoPrint; it does not relay replies, so return []."""
        command = command.strip()
        if not command or "\n" in command:
            raise DriverError("send one command at a time")
        word = command.split()[0].upper()
        if word == "M112":
            await self.emergency_stop()
            return []
        client = self._require_client()
        status = await self._refresh()
        if status.state in (MachineState.RUNNING, MachineState.PAUSED) and (
            word not in SAFE_WHILE_PRINTING
        ):
            safe = ", ".join(sorted(SAFE_WHILE_PRINTING))
            raise MachineBusy(
                f"{word} refused: the printer is printing; only {safe} may be sent during a print"
            )
        await self._call(f"sending {word}", partial(client.gcode, command))
        # The printer's reply goes to OctoPrint's push socket and terminal, not to REST.
        return []

    # -- polling -------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        """Refresh the snapshot forever, backing off while OctoPrint is unreachable."""
        while True:
            await asyncio.sleep(self._next_poll_s())
            try:
                await self._refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug in one poll must not end the following of a print.
                log.exception("polling OctoPrint at %s failed", self._display)

    async def _refresh(self) -> Status:
        """Poll OctoPrint once, update the snapshot and report changes."""
        async with self._refresh_lock:
            try:
                snap = await self._fetch()
            except DriverError as exc:
                self._on_unreachable(exc)
            else:
                self._apply(snap)
            return self._status

    async def _fetch(self) -> _Snapshot:
        """Read the job and the printer from OctoPrint."""
        client = self._require_client()

        def both() -> tuple[Any, Any]:
            return client.job_info(), client.printer_or_none()

        job, printer = await self._call("reading the job and printer state", both)
        return _snapshot(job, printer)

    def _next_poll_s(self) -> float:
        """Return the wait before the next poll: doubling per failure, up to max_backoff_s."""
        if not self._failures:
            return self._poll_interval_s
        # The exponent is capped so that a server down for days cannot overflow a float.
        return min(self._poll_interval_s * 2 ** min(self._failures, 16), self._max_backoff_s)

    def _on_unreachable(self, exc: DriverError) -> None:
        self._failures += 1
        delay = self._next_poll_s()
        if self._unreachable_since is None:
            self._unreachable_since = time.monotonic()
            self._reconnect_after_outage = self._want_printer
            log.warning("OctoPrint at %s is unreachable: %s", self._display, exc)
        # No DISCONNECTED event: that tells a supervisor to give up on this driver and fail
        # the job, but OctoPrint may well be printing on through a network blip. We report
        # OFFLINE, keep polling, and decide the print's fate once OctoPrint answers again.
        self._set_status(
            state=MachineState.OFFLINE,
            message=f"{exc}; retrying in {delay:.1f} s",
            temperatures={},
            extra={**self._status.extra, "reachable": False},
        )

    def _apply(self, snap: _Snapshot) -> None:
        """Make a poll's snapshot the status, and report what changed for the followed print."""
        if self._unreachable_since is not None:
            log.info(
                "OctoPrint at %s answers again after %.0f s",
                self._display,
                time.monotonic() - self._unreachable_since,
            )
            self._unreachable_since = None
        self._failures = 0
        previous = self._snapshot
        self._snapshot = snap
        state = snap.state
        progress = self._progress(snap)

        if self._job_file is not None:
            self._follow(snap, previous, progress)

        if self._estopped:
            # Sticky until connect(): the operator has to look at the machine first.
            state, message = MachineState.ERROR, self._status.message
        elif state is MachineState.OFFLINE and self._reconnect_after_outage:
            # OctoPrint came back without the printer (it restarted): connect it again,
            # once, as connect() had asked for. A printer closed by hand stays closed.
            self._reconnect_after_outage = False
            self._reconnect_printer()
            state, message = MachineState.CONNECTING, "OctoPrint is back; reconnecting the printer"
        else:
            message = self._message(snap)
        if state is not MachineState.OFFLINE:
            self._reconnect_after_outage = False
        self._set_status(
            state=state,
            message=message,
            temperatures=snap.temperatures,
            progress=progress,
            extra={
                "octoprint_state": snap.text,
                "octoprint_version": self._version,
                "job_file": snap.job_file,
                "following": self._job_file,
                "reachable": True,
            },
        )

    def _follow(
        self, snap: _Snapshot, previous: _Snapshot | None, progress: Progress | None
    ) -> None:
        """Turn what OctoPrint says about the followed print into events."""
        state = snap.state
        ours = snap.job_file == self._job_file
        if ours and state in (MachineState.RUNNING, MachineState.PAUSED):
            before = (
                previous.state
                if previous is not None and previous.job_file == snap.job_file
                else None
            )
            if state is MachineState.PAUSED and before is MachineState.RUNNING:
                self._emit(EventKind.PAUSED, file=self._job_file)
            elif state is MachineState.RUNNING and before is MachineState.PAUSED:
                self._emit(EventKind.RESUMED, file=self._job_file)
            return
        if state is MachineState.CONNECTING:
            return  # not decided yet: wait for the printer's state
        if state is MachineState.ERROR:
            reason = snap.error or "OctoPrint reports a printer error"
            self._finish_job(EventKind.FAILED, reason=reason, progress=progress)
        elif ours and state is MachineState.IDLE and (snap.completion or 0.0) >= 100.0:
            self._finish_job(EventKind.FINISHED, reason="", progress=progress)
        elif ours and state is MachineState.IDLE:
            reason = "cancelled" if self._cancel_requested else "cancelled on OctoPrint"
            self._finish_job(EventKind.CANCELLED, reason=reason, progress=progress)
        else:
            reason = (
                f"OctoPrint lost the print (state: {snap.text}); "
                "it restarted or the printer was disconnected"
            )
            if state is MachineState.OFFLINE:
                # A restart quicker than one poll looks just like this: the print is gone and
                # the printer is not connected. Connect it again as after an outage; the
                # failed job holds the machine until an operator has cleared the bed.
                self._reconnect_after_outage = self._want_printer
            self._finish_job(EventKind.FAILED, reason=reason, progress=progress)

    def _finish_job(self, kind: EventKind, *, reason: str, progress: Progress | None) -> None:
        file, self._job_file = self._job_file, None
        self._last_ended = file
        self._cancel_requested = False
        if kind is EventKind.FINISHED:
            log.info("print of %s finished on %s", file, self._display)
        else:
            log.warning("print of %s ended (%s) on %s: %s", file, kind, self._display, reason)
        self._emit(kind, file=file, reason=reason, progress=progress)

    def _reconnect_printer(self) -> None:
        client = self._client
        if client is None:
            return
        log.info("reconnecting the printer on %s (port %s)", self._display, self._port)

        async def reconnect() -> None:
            try:
                await self._call(
                    f"reconnecting the printer on port {self._port}",
                    partial(client.connect, port=self._port, baudrate=self._baudrate),
                )
            except DriverError as exc:
                log.warning("could not reconnect the printer on %s: %s", self._display, exc)
                self._reconnect_after_outage = True  # try again on a later poll

        task = asyncio.create_task(reconnect())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _message(self, snap: _Snapshot) -> str:
        state = snap.state
        if state is MachineState.IDLE:
            return "ready"
        if state is MachineState.RUNNING:
            return f"{snap.text.lower()} {snap.job_file}"
        if state is MachineState.PAUSED:
            return f"paused {snap.job_file}"
        if state is MachineState.CONNECTING:
            return f"OctoPrint: {snap.text.lower()}"
        if state is MachineState.ERROR:
            return f"printer error: {snap.error or snap.text}"
        return "OctoPrint is running but the printer is not connected"

    def _progress(self, snap: _Snapshot) -> Progress | None:
        """Return the progress of OctoPrint's current job, in our shape."""
        completion = snap.completion
        if completion is None and snap.state in (MachineState.RUNNING, MachineState.PAUSED):
            completion = 0.0  # just started: OctoPrint has not measured the position yet
        if snap.job_file is None or completion is None:
            return None
        lines_total = 0
        if self._lines_total is not None and self._lines_total[0] == snap.job_file:
            lines_total = self._lines_total[1]
        # OctoPrint measures completion by file position, not lines: this is an estimate.
        lines_acked = round(lines_total * completion / 100.0)
        started_at = None if snap.print_time_s is None else time.time() - snap.print_time_s
        return Progress(
            lines_total=lines_total,
            lines_sent=lines_acked,
            lines_acked=lines_acked,
            started_at=started_at,
            percent_hint=completion,
            eta_s_hint=snap.print_time_left_s,
        )

    # -- helpers -----------------------------------------------------------------------

    def _new_client(self) -> OctoPrintClient:
        return OctoPrintClient(url=self._url, api_key=self._api_key, timeout_s=self._timeout_s)

    def _require_client(self) -> OctoPrintClient:
        if self._client is None:
            raise DriverError(f"not connected to OctoPrint at {self._display}: connect first")
        return self._client

    def _job_timeout(self) -> float:
        # Pausing waits for the moves already in the printer's buffer to finish.
        return max(30.0, 3 * self._timeout_s)

    async def _call(self, action: str, fn: Callable[[], T]) -> T:
        """Run one blocking octorest call in a worker thread and translate its errors."""
        try:
            return await asyncio.to_thread(fn)
        except (requests.RequestException, RuntimeError, ValueError) as exc:
            # Only what a peer can cause: a bug of ours must surface as one, not as "offline".
            raise translate_error(
                exc, url=self._display, action=action, secret=self._api_key
            ) from exc

    async def _wait_for(
        self,
        what: str,
        done: Callable[[Status], bool],
        timeout_s: float,
        *,
        fail_on_error: bool = False,
    ) -> Status:
        """Refresh until done(status) holds; fail after timeout_s with the last state."""
        deadline = time.monotonic() + timeout_s
        while True:
            async with self._refresh_lock:
                snap = await self._fetch()  # errors propagate: the caller is waiting on us
                self._apply(snap)
            status = self._status
            if fail_on_error and status.state is MachineState.ERROR:
                raise MachineOffline(
                    f"OctoPrint could not {what} on port {self._port}: {snap.error or snap.text}"
                )
            if done(status):
                return status
            if time.monotonic() > deadline:
                raise DriverError(
                    f"OctoPrint did not {what} within {timeout_s:.0f} s (state: {snap.text})"
                )
            await asyncio.sleep(0.2)
