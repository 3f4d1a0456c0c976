"""Moonraker driver: runs programs on a Klipper printer behind a Moonraker server.

Status comes over Moonraker's websocket (JSON-RPC 2.0 at /websocket): the driver subscribes
to `print_stats`, `virtual_sdcard`, `extruder`, `heater_bed`, `toolhead`, `display_status`
and `webhooks` with `printer.objects.subscribe`, and Moonraker pushes what changes
(`notify_status_update`), plus `notify_klippy_ready|shutdown|disconnected`. Uploads and job
control go over HTTP (`/server/files/upload`, `/printer/print/start|pause|resume|cancel`,
`/printer/emergency_stop`, `/printer/gcode/script`), with httpx.

Klippy's states are shown to operators with the message Klippy gives: `startup` is
CONNECTING, `shutdown` and `error` are ERROR (a print then fails with Klippy's message),
Klippy not connected to Moonraker is OFFLINE. httpx and websockets errors are translated
at the boundary into MachineOffline, AuthFailed and DriverError.

When the websocket drops, the machine is OFFLINE with the reason and the driver reconnects
by itself, backing off; a print it follows is then judged by what Moonraker says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlunsplit

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus, WebSocketException

from drivers.base import (
    AuthFailed,
    Driver,
    DriverError,
    EventKind,
    MachineBusy,
    MachineOffline,
    MachineState,
    Program,
    ProgramRefused,
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
    status_error,
    stop_task,
    translate_http_error,
)
from drivers.planner import MachineLimits

log = logging.getLogger(__name__)

#: the printer objects the driver follows
OBJECTS: tuple[str, ...] = (
    "print_stats",
    "virtual_sdcard",
    "extruder",
    "heater_bed",
    "toolhead",
    "display_status",
    "webhooks",
)

#: the largest thumbnail image the driver downloads from Moonraker
MAX_THUMBNAIL_BYTES = 2 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def metadata_summary(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Return the parts of Moonraker's file metadata a job's analysis uses, as plain data.

    Moonraker's metadata extraction (its `metadata.py`, run on upload) reads the slicer's
    header and footer: `estimated_time` (s), `filament_total` (mm), `filament_weight_total`
    (g), `slicer`/`slicer_version`, `layer_height`/`object_height` (mm), and `thumbnails`
    (each `width`, `height`, `size`, `relative_path` under `.thumbs/`; QOI thumbnails are
    converted to PNG, and a 32x32 one is made when the slicer wrote none).
    """
    thumbnails = []
    for thumb in data.get("thumbnails") or []:
        if not isinstance(thumb, Mapping):
            continue
        width, height = _number(thumb.get("width")), _number(thumb.get("height"))
        path = str(thumb.get("relative_path") or "")
        if width and height and path:
            thumbnails.append(
                {
                    "width": int(width),
                    "height": int(height),
                    "size": int(_number(thumb.get("size")) or 0),
                    "relative_path": path,
                }
            )
    slicer = data.get("slicer")
    version = data.get("slicer_version")
    return {
        "source": "moonraker",
        "file": name,
        "slicer": str(slicer) if slicer else None,
        "slicer_version": str(version) if version else None,
        "estimated_time_s": _number(data.get("estimated_time")),
        "filament_mm": _number(data.get("filament_total")),
        "filament_g": _number(data.get("filament_weight_total")),
        "layer_height_mm": _number(data.get("layer_height")),
        "object_height_mm": _number(data.get("object_height")),
        "thumbnails": thumbnails,
    }


#: Commands that may be sent while a print runs: they only report, never move or heat.
SAFE_WHILE_PRINTING = frozenset({"M105", "M114", "M115", "M119", "M27", "M31", "M117"})


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _moonraker_message(response: httpx.Response) -> str:
    """Return the readable part of a Moonraker error reply ({"error": {"message"}})."""
    with contextlib.suppress(ValueError):
        data = response.json()
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and err.get("message"):
            message = _first_line(str(err["message"]))
            # Upload errors come as the bare reason ("Forbidden"); tornado's last traceback
            # line says why: "HTTPError: HTTP 403: Forbidden (Access to file x forbidden ...)".
            last = str(err.get("traceback") or "").strip().splitlines()[-1:] or [""]
            why = re.search(r"HTTP \d+: [^(]*\((.+)\)\s*$", last[0])
            if message == response.reason_phrase and why is not None:
                return why.group(1)
            return message
    return " ".join(response.text.split())[:200] or "no details"


def translate_error(exc: BaseException, *, url: str, action: str) -> DriverError:
    """Turn an httpx or websockets exception into a DriverError an operator can act on."""
    if isinstance(exc, httpx.HTTPStatusError | InvalidStatus):
        status = exc.response.status_code
        detail = _moonraker_message(exc.response) if isinstance(exc, httpx.HTTPStatusError) else ""
        if status == 401:  # Moonraker's authorization answers 401 (403 is a file refusal)
            return AuthFailed(
                f"Moonraker at {url} refused the request (HTTP 401) while {action}: "
                "set the machine's api_key to Moonraker's API key, or add this server to "
                "[authorization] trusted_clients in moonraker.conf"
            )
        if status == 404:
            return DriverError(
                f"Moonraker at {url} has no such resource (HTTP 404) while {action}"
                f"{': ' + detail if detail else ''}; is the URL right?"
            )
        return status_error("Moonraker", url, action, status, detail)
    return translate_http_error(
        exc,
        host="Moonraker",
        url=url,
        action=action,
        timeout_hint="check that the server is running and not overloaded",
        detail=_moonraker_message,
        link_errors=(WebSocketException,),
    )


def configfile_motion_limits(settings: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    """Return motion limits from Klipper's `configfile.settings` ([printer], [extruder]).

    Klipper plans every move with `max_accel` and joins moves by `square_corner_velocity`,
    which it turns into a junction deviation of scv² (√2 - 1) / max_accel (toolhead.py).
    Its look-ahead is not a ring of fixed size, so the planner plans over the whole program.
    """
    printer = settings.get("printer") if isinstance(settings, Mapping) else None
    if not isinstance(printer, Mapping):
        return None
    extruder = settings.get("extruder")
    extruder = extruder if isinstance(extruder, Mapping) else {}

    def num(values: Mapping[str, Any], key: str, default: float) -> float:
        try:
            value = float(values.get(key, default))
        except (TypeError, ValueError):
            return default
        return value if math.isfinite(value) and value > 0 else default

    stock = MachineLimits.marlin()
    velocity = num(printer, "max_velocity", stock.max_feedrate[0])
    accel = num(printer, "max_accel", stock.max_acceleration[0])
    scv = num(printer, "square_corner_velocity", 5.0)
    limits = replace(
        stock,
        max_feedrate=(
            velocity,
            velocity,
            num(printer, "max_z_velocity", velocity),
            num(extruder, "max_extrude_only_velocity", stock.max_feedrate[3]),
        ),
        max_acceleration=(
            accel,
            accel,
            num(printer, "max_z_accel", accel),
            num(extruder, "max_extrude_only_accel", stock.max_acceleration[3]),
        ),
        print_acceleration=accel,
        retract_acceleration=accel,
        travel_acceleration=accel,
        junction_deviation=scv * scv * (math.sqrt(2.0) - 1.0) / accel,
        block_buffer_size=0,
    )
    return {
        **limits.as_dict(),
        "source": f"Klipper configfile [printer] at {where}",
        "read_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


class MoonrakerDriver(Driver):
    """A Klipper printer behind a Moonraker server: websocket status, HTTP control."""

    name = "moonraker"
    secret_fields = frozenset({"api_key"})

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        parts = host_url(self.settings.get("url"), "Moonraker")
        self._url = parts.geturl().rstrip("/")
        self._display = display_url(self._url)
        ws_scheme = "wss" if parts.scheme == "https" else "ws"
        self._ws_url = urlunsplit((ws_scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self._ws_url += "/websocket"
        self._api_key = str(self.settings.get("api_key") or "")
        self._timeout_s = float(self.settings.get("timeout_s") or 10.0)
        self._max_backoff_s = float(self.settings.get("max_backoff_s") or 30.0)

        self._http: httpx.AsyncClient | None = None
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._rpc_id = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._objects: dict[str, dict[str, Any]] = {}
        self._klippy_connected = False
        self._changed = asyncio.Condition()
        self._closing = False

        self._job_file: str | None = None
        self._lines_total = 0
        self._cancel_requested = False
        self._last_print_state: str | None = None
        self._last_ended: str | None = None  # the last print whose end we reported
        self._starting = False  # start() is waiting for Klippy to take the file
        # Strong references to fire-and-forget tasks, which asyncio holds only weakly.
        self._background: set[asyncio.Task[None]] = set()
        # Klipper's [printer] limits as MachineLimits fields, plus "source" and "read_at".
        self.motion_limits: dict[str, Any] | None = None

    # -- public API beyond the Driver interface --------------------------------

    @property
    def job_file(self) -> str | None:
        """Return the Moonraker file name of the print this driver follows, if any."""
        return self._job_file

    async def attach(
        self, file_name: str | None = None, *, lines_total: int = 0
    ) -> Progress | None:
        """Follow the print Klippy is running (e.g. after our restart); return its progress.

        With file_name, follow only that file (the name `job_file` had when we started it).
        Return None when Klippy is not printing it. A print of that file that has already
        completed is followed too: its final progress is returned and FINISHED is emitted at
        once, so a supervisor that was down during the end still learns of it.
        """
        stats = self._print_stats()
        filename = str(stats.get("filename") or "")
        state = str(stats.get("state") or "")
        if not filename or (file_name is not None and filename != file_name):
            return None
        active = state in ("printing", "paused") and self._webhooks().get("state") == "ready"
        completed = file_name is not None and state == "complete" and filename != self._last_ended
        if not (active or completed):
            return None
        self._job_file = filename
        self._lines_total = lines_total
        self._cancel_requested = False
        self._last_print_state = state if active else None
        progress = self._progress()
        log.info("following the print of %s on Moonraker at %s", filename, self._display)
        self._refresh_status()
        return progress

    async def file_metadata(self, name: str) -> dict[str, Any] | None:
        """Return Moonraker's metadata of a file in its gcodes root (metadata_summary), or
        None when Moonraker has none for it (not a file it could read)."""
        client = self._client()
        action = f"reading the metadata of {name}"
        try:
            response = await client.get("/server/files/metadata", params={"filename": name})
            if response.status_code == 404:
                return None
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise translate_error(exc, url=self._display, action=action) from exc
        result = body.get("result") if isinstance(body, dict) else None
        if not isinstance(result, dict):
            raise ProtocolError(f"Moonraker at {self._display} answered {action} oddly")
        return metadata_summary(name, result)

    async def thumbnail(self, relative_path: str, *, max_bytes: int = MAX_THUMBNAIL_BYTES) -> bytes:
        """Download a PNG thumbnail Moonraker extracted (a `relative_path` of file_metadata)."""
        if relative_path.startswith("/") or ".." in relative_path.split("/"):
            raise DriverError(f"refusing the thumbnail path {relative_path!r}")
        if not relative_path.lower().endswith(".png"):
            raise DriverError(f"only PNG thumbnails are taken, not {relative_path!r}")
        client = self._client()
        action = f"downloading the thumbnail {relative_path}"
        path = "/server/files/gcodes/" + quote(relative_path)
        data = bytearray()
        try:
            async with client.stream("GET", path) as response:
                response.raise_for_status()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > max_bytes:
                        raise DriverError(
                            f"the thumbnail {relative_path} is over {max_bytes} bytes"
                        )
        except httpx.HTTPError as exc:
            raise translate_error(exc, url=self._display, action=action) from exc
        if not data.startswith(PNG_SIGNATURE):
            raise ProtocolError(f"the thumbnail {relative_path} from Moonraker is not a PNG")
        return bytes(data)

    # -- the Driver interface ----------------------------------------------------

    async def connect(self) -> None:
        """Reach Moonraker, open the websocket and subscribe to the printer's objects."""
        await self._drop_websocket()  # connect() again (after a reset) starts afresh
        self._closing = False
        self._set_status(state=MachineState.CONNECTING, message=f"connecting to {self._display}")
        if self._http is None:
            headers = {"X-Api-Key": self._api_key} if self._api_key else {}
            self._http = httpx.AsyncClient(
                base_url=self._url, headers=headers, timeout=self._timeout_s, trust_env=False
            )
        try:
            info = await self._get("/server/info", "reading the server info")
            await self._open_websocket()
        except DriverError as exc:
            self._set_status(state=MachineState.OFFLINE, message=str(exc))
            raise
        await self._read_motion_limits()
        log.info(
            "connected to Moonraker %s at %s (Klippy %s)",
            info.get("moonraker_version"),
            self._display,
            info.get("klippy_state"),
        )

    async def _drop_websocket(self) -> None:
        self._closing = True
        for pending in list(self._background):
            pending.cancel()
        task, self._reader = self._reader, None
        await stop_task(task)
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(OSError, WebSocketException):
                await ws.close()

    async def _read_motion_limits(self) -> None:
        if not self._klippy_connected:
            return
        try:
            result = await self._rpc(
                "printer.objects.query", {"objects": {"configfile": ["settings"]}}
            )
            settings = ((result or {}).get("status") or {}).get("configfile", {}).get("settings")
            self.motion_limits = configfile_motion_limits(settings or {}, self._display)
        except (DriverError, AttributeError, TypeError) as exc:
            log.info("no motion limits from Klipper at %s: %s", self._display, exc)

    async def close(self) -> None:
        """Stop following Moonraker; a running print carries on there."""
        await self._drop_websocket()
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()
        if self._status.state is not MachineState.OFFLINE:
            self._set_status(state=MachineState.OFFLINE, message="not connected")

    async def start(self, program: Program) -> None:
        """Upload the program and start printing it; return once Klippy prints it."""
        check_ready_to_start(self._status)
        name = safe_upload_name(program)
        data = await program_bytes(program)
        await self._upload(program, name, data)
        self._job_file = name
        self._lines_total = len(program.lines)
        self._cancel_requested = False
        self._last_print_state = None
        self._starting = True
        try:
            await self._post("/printer/print/start", f"starting {name}", params={"filename": name})
            await self._wait_for(
                f"start printing {name}",
                lambda: (
                    self._print_stats().get("filename") == name
                    and self._print_stats().get("state") in ("printing", "paused", "complete")
                ),
            )
        except DriverError:
            self._job_file = None
            raise
        finally:
            self._starting = False
        log.info("uploaded %s as %s to %s and started it", program.name, name, self._display)
        self._emit(EventKind.STARTED, file=name, program=program.name)
        self._refresh_status()

    async def _upload(self, program: Program, name: str, data: bytes) -> None:
        """Upload a program to Moonraker's gcodes root; a refusal of the file itself (a 4xx
        other than credentials, a wrong URL or a busy server) is ProgramRefused."""
        client = self._client()
        action = f"uploading {name}"
        try:
            response = await client.post(
                "/server/files/upload",
                files={"file": (name, data, "application/octet-stream")},
                data={"root": "gcodes"},
            )
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            if 400 <= status < 500 and status not in (401, 404, 408, 429):
                raise ProgramRefused(
                    f"Moonraker at {self._display} refused the upload of {program.name} "
                    f"({len(data)} bytes, as {name}): HTTP {status}: "
                    f"{_moonraker_message(exc.response)}"
                ) from exc
            raise translate_error(exc, url=self._display, action=action) from exc
        except httpx.HTTPError as exc:
            raise translate_error(exc, url=self._display, action=action) from exc

    async def pause(self) -> None:
        """Pause the print; return once Klippy reports it paused."""
        await self._post("/printer/print/pause", "pausing the print")
        await self._wait_for("pause", lambda: self._print_stats().get("state") != "printing")

    async def resume(self) -> None:
        """Resume the paused print; return once Klippy prints again."""
        await self._post("/printer/print/resume", "resuming the print")
        await self._wait_for("resume", lambda: self._print_stats().get("state") != "paused")

    async def cancel(self) -> None:
        """Cancel the print; return once Klippy has stopped it."""
        self._cancel_requested = True
        try:
            await self._post("/printer/print/cancel", "cancelling the print")
        except DriverError:
            self._cancel_requested = False
            raise
        await self._wait_for(
            "cancel", lambda: self._print_stats().get("state") not in ("printing", "paused")
        )

    async def emergency_stop(self) -> None:
        """Have Klippy shut down now (M112); FIRMWARE_RESTART recovers it."""
        await self._post("/printer/emergency_stop", "sending the emergency stop")
        if self._job_file is not None:
            self._finish_job(EventKind.FAILED, reason="emergency stop")

    async def reset(self) -> str:
        """Restart Klipper's firmware after a shutdown (FIRMWARE_RESTART)."""
        await self._post("/printer/firmware_restart", "restarting the firmware")
        await self._wait_for(
            "restart the firmware", lambda: self._webhooks().get("state") == "ready"
        )
        return "Klipper's firmware was restarted (FIRMWARE_RESTART); the printer is not homed"

    async def send(self, command: str) -> list[str]:
        """Send one G-code command through Moonraker; its replies go to the console, so []."""
        command = command.strip()
        if not command or "\n" in command:
            raise DriverError("send one command at a time")
        word = command.split()[0].upper()
        if word == "M112":
            await self.emergency_stop()
            return []
        if self._status.state in (MachineState.RUNNING, MachineState.PAUSED) and (
            word not in SAFE_WHILE_PRINTING
        ):
            safe = ", ".join(sorted(SAFE_WHILE_PRINTING))
            raise MachineBusy(
                f"{word} refused: the printer is printing; only {safe} may be sent during a print"
            )
        await self._post("/printer/gcode/script", f"sending {word}", params={"script": command})
        return []

    # -- HTTP ------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise DriverError(f"not connected to Moonraker at {self._display}: connect first")
        return self._http

    async def _get(self, path: str, action: str) -> dict[str, Any]:
        return await self._request("GET", path, action)

    async def _post(self, path: str, action: str, **kwargs: Any) -> dict[str, Any]:
        return await self._request("POST", path, action, **kwargs)

    async def _request(self, method: str, path: str, action: str, **kwargs: Any) -> Any:
        client = self._client()
        try:
            response = await client.request(method, path, **kwargs)
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise translate_error(exc, url=self._display, action=action) from exc
        if not isinstance(body, dict):
            raise ProtocolError(f"Moonraker at {self._display} answered {action} oddly: {body!r}")
        return body.get("result", body)

    # -- the websocket -----------------------------------------------------------------

    async def _open_websocket(self) -> None:
        headers = {"X-Api-Key": self._api_key} if self._api_key else None
        try:
            self._ws = await ws_connect(
                self._ws_url,
                additional_headers=headers,
                proxy=None,
                open_timeout=self._timeout_s,
                max_size=16 * 1024 * 1024,
            )
        except (OSError, WebSocketException, TimeoutError) as exc:
            raise translate_error(exc, url=self._display, action="opening the websocket") from exc
        self._reader = asyncio.create_task(
            self._read_loop(self._ws), name=f"moonraker {self._ws_url}"
        )
        await self._subscribe()

    async def _subscribe(self) -> None:
        """Subscribe to the printer's objects; without Klippy, wait for notify_klippy_ready."""
        try:
            result = await self._rpc(
                "printer.objects.subscribe", {"objects": dict.fromkeys(OBJECTS)}
            )
        except DriverError as exc:
            self._klippy_connected = False
            self._objects = {}
            self._set_status(
                state=MachineState.OFFLINE,
                message=f"Klippy is not connected to Moonraker: {exc}",
                temperatures={},
            )
            return
        self._klippy_connected = True
        self._objects = {k: dict(v) for k, v in (result.get("status") or {}).items()}
        await self._on_update()

    async def _rpc(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        ws = self._ws
        if ws is None:
            raise MachineOffline(f"not connected to Moonraker at {self._display}")
        self._rpc_id += 1
        rpc_id = self._rpc_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rpc_id] = future
        message = {"jsonrpc": "2.0", "method": method, "params": dict(params or {}), "id": rpc_id}
        try:
            await ws.send(json.dumps(message))
            return await asyncio.wait_for(future, self._timeout_s)
        except (OSError, WebSocketException, TimeoutError) as exc:
            raise translate_error(exc, url=self._display, action=f"calling {method}") from exc
        finally:
            self._pending.pop(rpc_id, None)

    async def _read_loop(self, ws: ClientConnection) -> None:
        failures = 0
        while True:
            try:
                async for raw in ws:
                    self._on_message(raw)
                reason = "Moonraker closed the websocket"
            except (OSError, WebSocketException) as exc:
                reason = f"the websocket to Moonraker failed: {exc}"
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(MachineOffline(reason))
            if self._closing:
                return
            log.warning("Moonraker at %s: %s", self._display, reason)
            while not self._closing:
                failures += 1
                delay = min(0.5 * 2 ** min(failures, 8), self._max_backoff_s)
                self._set_status(
                    state=MachineState.OFFLINE,
                    message=f"{reason}; retrying in {delay:.1f} s",
                    temperatures={},
                )
                await asyncio.sleep(delay)
                try:
                    ws = await ws_connect(
                        self._ws_url,
                        additional_headers={"X-Api-Key": self._api_key} if self._api_key else None,
                        proxy=None,
                        open_timeout=self._timeout_s,
                        max_size=16 * 1024 * 1024,
                    )
                except (OSError, WebSocketException, TimeoutError) as exc:
                    reason = str(translate_error(exc, url=self._display, action="reconnecting"))
                    continue
                self._ws = ws
                failures = 0
                log.info("Moonraker at %s answers again", self._display)
                self._spawn(self._subscribe())
                break

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_message(self, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            log.warning("Moonraker at %s sent something that is not JSON", self._display)
            return
        if not isinstance(message, dict):
            return
        if "id" in message and message.get("id") in self._pending:
            future = self._pending[message["id"]]
            if future.done():
                return
            if "error" in message:
                err = message["error"] or {}
                text = _first_line(str(err.get("message") if isinstance(err, dict) else err))
                future.set_exception(DriverError(f"Moonraker: {text}"))
            else:
                future.set_result(message.get("result"))
            return
        method = message.get("method")
        params = message.get("params") or []
        if method == "notify_status_update" and params:
            for name, values in (params[0] or {}).items():
                self._objects.setdefault(name, {}).update(values)
            self._spawn(self._on_update())
        elif method == "notify_klippy_ready":
            self._spawn(self._subscribe())
        elif method == "notify_klippy_disconnected":
            self._klippy_connected = False
            self._objects.pop("webhooks", None)
            self._spawn(self._on_update())
        elif method == "notify_gcode_response" and params:
            self._emit(EventKind.LOG, line=str(params[0]))

    # -- status ----------------------------------------------------------------------

    def _print_stats(self) -> dict[str, Any]:
        return self._objects.get("print_stats") or {}

    def _webhooks(self) -> dict[str, Any]:
        return self._objects.get("webhooks") or {}

    async def _on_update(self) -> None:
        self._refresh_status()
        async with self._changed:
            self._changed.notify_all()

    def _refresh_status(self) -> None:
        """Make the followed objects the status, and turn the print's changes into events."""
        webhooks = self._webhooks()
        klippy = str(
            webhooks.get("state") or ("disconnected" if not self._klippy_connected else "")
        )
        klippy_message = _first_line(str(webhooks.get("state_message") or ""))
        stats = self._print_stats()
        print_state = str(stats.get("state") or "standby")
        filename = str(stats.get("filename") or "")
        if klippy != "ready":
            state = {
                "startup": MachineState.CONNECTING,
                "shutdown": MachineState.ERROR,
                "error": MachineState.ERROR,
            }.get(klippy, MachineState.OFFLINE)
            message = f"Klippy {klippy or 'disconnected'}: {klippy_message or 'no message'}"
        elif print_state == "printing":
            state, message = MachineState.RUNNING, f"printing {filename}"
        elif print_state == "paused":
            state, message = MachineState.PAUSED, f"paused {filename}"
        elif print_state == "error":
            state = MachineState.ERROR
            message = f"print error: {stats.get('message') or 'no message'}"
        else:
            state, message = MachineState.IDLE, "ready"
        if self._job_file is not None and not self._starting:
            self._follow(klippy, klippy_message, print_state, filename, stats)
        self._set_status(
            state=state,
            message=message,
            temperatures=self._temperatures(),
            position=self._position(),
            firmware=None,
            progress=self._progress(),
            extra={
                "klippy_state": klippy or "disconnected",
                "klippy_message": klippy_message,
                "print_state": print_state,
                "job_file": filename or None,
                "following": self._job_file,
            },
        )

    def _follow(
        self,
        klippy: str,
        klippy_message: str,
        print_state: str,
        filename: str,
        stats: Mapping[str, Any],
    ) -> None:
        if klippy in ("shutdown", "error"):
            self._finish_job(
                EventKind.FAILED, reason=f"Klippy {klippy}: {klippy_message or 'no message'}"
            )
            return
        if klippy != "ready":
            return  # Klippy is starting or not connected to Moonraker: wait for it
        if filename != self._job_file or print_state == "standby":
            self._finish_job(
                EventKind.FAILED,
                reason=f"Klippy is no longer printing {self._job_file} "
                f"(print state: {print_state}, file: {filename or 'none'}); "
                "Klippy was restarted or another print was started",
            )
            return
        before, self._last_print_state = self._last_print_state, print_state
        if print_state == "paused" and before == "printing":
            self._emit(EventKind.PAUSED, file=self._job_file)
        elif print_state == "printing" and before == "paused":
            self._emit(EventKind.RESUMED, file=self._job_file)
        elif print_state == "complete":
            self._finish_job(EventKind.FINISHED, reason="")
        elif print_state == "cancelled":
            reason = "cancelled" if self._cancel_requested else "cancelled on the printer"
            self._finish_job(EventKind.CANCELLED, reason=reason)
        elif print_state == "error":
            self._finish_job(
                EventKind.FAILED, reason=f"print error: {stats.get('message') or 'no message'}"
            )

    def _finish_job(self, kind: EventKind, *, reason: str) -> None:
        progress = self._progress()
        file, self._job_file = self._job_file, None
        self._last_ended = file
        self._cancel_requested = False
        if kind is EventKind.FINISHED:
            log.info("print of %s finished on %s", file, self._display)
        else:
            log.warning("print of %s ended (%s) on %s: %s", file, kind, self._display, reason)
        self._emit(kind, file=file, reason=reason, progress=progress)

    def _temperatures(self) -> dict[str, Temperature]:
        out: dict[str, Temperature] = {}
        for key, name in (("extruder", "T"), ("heater_bed", "B")):
            values = self._objects.get(key) or {}
            if values.get("temperature") is not None:
                target = values.get("target")
                out[name] = Temperature(
                    float(values["temperature"]), None if target is None else float(target)
                )
        return out

    def _position(self) -> dict[str, float]:
        position = (self._objects.get("toolhead") or {}).get("position") or []
        return {axis: float(v) for axis, v in zip("XYZE", position, strict=False)}

    def _progress(self) -> Progress | None:
        stats = self._print_stats()
        if not stats.get("filename"):
            return None
        sdcard = self._objects.get("virtual_sdcard") or {}
        fraction = float(sdcard.get("progress") or 0.0)
        duration = float(stats.get("print_duration") or 0.0)
        lines_total = self._lines_total if stats.get("filename") == self._job_file else 0
        acked = round(lines_total * fraction)
        eta = duration * (1 - fraction) / fraction if fraction > 0 else None
        return Progress(
            lines_total=lines_total,
            lines_sent=acked,
            lines_acked=acked,
            started_at=time.time() - duration if duration else None,
            percent_hint=100.0 * fraction,
            eta_s_hint=None if eta is None else round(eta, 1),
        )

    async def _wait_for(self, what: str, done: Callable[[], bool]) -> None:
        """Wait until done() holds on the pushed status; fail on Klippy errors or timeout."""
        timeout = max(30.0, 3 * self._timeout_s)

        def settled() -> bool:
            return done() or self._webhooks().get("state") in ("shutdown", "error")

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(settled), timeout)
        except TimeoutError:
            raise DriverError(
                f"Moonraker did not {what} within {timeout:.0f} s ({self._status.message})"
            ) from None
        if not done():
            raise DriverError(f"could not {what}: {self._status.message}")
