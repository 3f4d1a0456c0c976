"""A small emulator of Klipper's host (`klippy`) API server, for running the real Moonraker.

Klipper's host cannot be installed here, so the tests put this behind the unix socket
Moonraker connects to (`klippy_uds_address`). It speaks Klippy's API-server protocol: JSON
objects each ended by the byte 0x03; requests `{"id", "method", "params"}`, answers
`{"id", "result"}` or `{"id", "error": {"error", "message"}}`, and pushes
`{"method": <the request's response_template method>, "params": ...}` for subscriptions.

What it answers (what Moonraker 0.11 asks at startup and for the printer APIs):
`info`, `list_endpoints`, `objects/list`, `objects/query`, `objects/subscribe` (with pushes
of what changed, every `push_interval_s`), `gcode/help`, `gcode/script`,
`gcode/subscribe_output`, `register_remote_method`, `pause_resume/pause|resume|cancel`,
`emergency_stop`. Printing: `SDCARD_PRINT_FILE FILENAME=...` reads the file from Moonraker's
gcodes folder and "runs" its command lines; `PAUSE`, `RESUME`, `CANCEL_PRINT`, `M112`,
`M104`/`M109`/`M140`/`M190` (targets, reached at once) are understood; other G-code is
answered `ok`. `shutdown(message)` puts Klippy into `shutdown` as a firmware fault would.

Limits, on purpose:
- No motion: with `speed_factor` set, each command line takes the time our own planner
  (drivers/planner.py) gives its move, under the limits `configfile` reports (Klipper's
  max_accel for every move, square_corner_velocity as junction deviation, whole-program
  look-ahead), divided by `speed_factor`; lines that do not move take no time (heating is
  instant). Without it, every line takes `line_time_s`. Only G0/G1 with G90/G91/M82/M83/
  G92/G28 are understood for motion (no arcs). `print_duration` is the emulator's wall clock.
  `toolhead.position` stays where it is; temperatures jump to their targets.
- One printer, one extruder, one bed; no macros, no `[include]`, no config file parsing:
  `configfile` reports a fixed minimal config (with the virtual_sdcard path Moonraker needs).
- Subscriptions are one per connection, replaced by the next request, as Klippy does; a
  push carries only the fields that changed since the last one.
- After `shutdown` everything but `info`, queries and `FIRMWARE_RESTART`/`RESTART`
  answers "Printer is shutdown" (Klippy's own wording); a restart returns to `ready`.
- `info` reports `klipper_path` (default: beside the gcodes folder). Pointed at the gcodes
  folder itself, Moonraker reserves that folder and refuses every upload (HTTP 403): the
  tests' way to have the real Moonraker refuse an upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drivers.moonraker import configfile_motion_limits
from drivers.planner import MachineLimits, PlanLimits, limits_from_dict, plan_times

ETX = b"\x03"
VERSION = "v0.12.0-emulated"

_FILENAME = re.compile(r"FILENAME=(\"(?P<q>[^\"]*)\"|(?P<p>\S+))", re.I)


def planned_times(lines: list[str], limits: MachineLimits) -> list[float]:
    """Return each line's time in seconds as our planner plans the program's moves."""
    pos = [0.0, 0.0, 0.0, 0.0]
    absolute, absolute_e = True, True
    feed = 25.0  # mm/s until the program sets F
    deltas: list[list[float]] = []
    feeds: list[float] = []
    index: list[int] = []
    for i, line in enumerate(lines):
        words = line.split()
        cmd = words[0].upper()
        if cmd == "G90":
            absolute = absolute_e = True
        elif cmd == "G91":
            absolute = absolute_e = False
        elif cmd in ("M82", "M83"):
            absolute_e = cmd == "M82"
        elif cmd == "G28":
            pos[:3] = [0.0, 0.0, 0.0]
        elif cmd in ("G0", "G1", "G92"):
            new = list(pos)
            for word in words[1:]:
                axis = word[:1].upper()
                try:
                    value = float(word[1:])
                except ValueError:
                    continue
                if axis == "F" and value > 0:
                    feed = value / 60
                elif axis in "XYZE" and axis:
                    k = "XYZE".index(axis)
                    if cmd == "G92" or (absolute_e if axis == "E" else absolute):
                        new[k] = value
                    else:
                        new[k] = pos[k] + value
            if cmd == "G92":
                pos = new
                continue
            delta = [new[k] - pos[k] for k in range(4)]
            pos = new
            if any(delta):
                deltas.append(delta)
                feeds.append(feed)
                index.append(i)
    out = [0.0] * len(lines)
    if not deltas:
        return out
    n = len(deltas)
    first = np.zeros(n, dtype=bool)
    last = np.zeros(n, dtype=bool)
    first[0] = last[-1] = True
    times = plan_times(
        np.array(deltas, dtype=np.float64).T,
        np.array(feeds, dtype=np.float64),
        first,
        last,
        PlanLimits.constant(limits),
        None,
    )
    for j, i in enumerate(index):
        out[i] = float(times[j])
    return out


class KlippyRequestError(Exception):
    """A request Klippy answers with an error (its WebRequestError)."""


@dataclass
class _Client:
    writer: asyncio.StreamWriter
    subscription: dict[str, list[str] | None] = field(default_factory=dict)
    sub_method: str | None = None
    last_sent: dict[str, dict[str, Any]] = field(default_factory=dict)
    gcode_method: str | None = None


def _clean(line: str) -> str:
    return line.split(";", 1)[0].strip()


class KlippyEmulator:
    """Klippy's API server on a unix socket, running on its own thread's event loop."""

    def __init__(
        self,
        socket_path: Path,
        gcodes_dir: Path,
        *,
        line_time_s: float = 0.01,
        speed_factor: float | None = None,
        push_interval_s: float = 0.1,
        klipper_path: Path | None = None,
    ) -> None:
        self.socket_path = socket_path
        # Where `info` says Klipper is installed. Moonraker reserves that path: with it inside
        # the gcodes folder, Moonraker refuses every upload there (HTTP 403).
        self.klipper_path = klipper_path or gcodes_dir.parent / "klipper"
        self.gcodes_dir = gcodes_dir
        self.line_time_s = line_time_s
        self.speed_factor = speed_factor
        self.push_interval_s = push_interval_s
        self.received: list[dict[str, Any]] = []  # every request, for tests to inspect
        self._clients: list[_Client] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._print_task: asyncio.Task[None] | None = None
        self._reset_state()

    # -- state -------------------------------------------------------------------------

    def _reset_state(self) -> None:
        self.state = "ready"
        self.state_message = "Printer is ready"
        self.extruder = {"temperature": 21.0, "target": 0.0, "power": 0.0}
        self.bed = {"temperature": 21.0, "target": 0.0, "power": 0.0}
        self.print_state = "standby"
        self.print_message = ""
        self.filename = ""
        self.lines: list[str] = []
        self.line_times: list[float] = []
        self.done = 0
        self.file_size = 0
        self.print_duration = 0.0
        self.total_duration = 0.0
        self.paused = False

    def objects(self) -> dict[str, dict[str, Any]]:
        """Return every printer object's full status, as Klippy's get_status gives it."""
        progress = self.done / len(self.lines) if self.lines else 0.0
        active = self.print_state == "printing" and self.state == "ready"
        return {
            "webhooks": {"state": self.state, "state_message": self.state_message},
            "print_stats": {
                "filename": self.filename,
                "total_duration": round(self.total_duration, 3),
                "print_duration": round(self.print_duration, 3),
                "filament_used": 0.0,
                "state": self.print_state,
                "message": self.print_message,
                "info": {"total_layer": None, "current_layer": None},
            },
            "virtual_sdcard": {
                "file_path": str(self.gcodes_dir / self.filename) if self.filename else None,
                "progress": round(progress, 4),
                "is_active": active,
                "file_position": round(self.file_size * progress),
                "file_size": self.file_size,
            },
            "display_status": {"progress": round(progress, 4), "message": None},
            "pause_resume": {"is_paused": self.paused},
            "extruder": dict(self.extruder),
            "heater_bed": dict(self.bed),
            "toolhead": {
                "position": [0.0, 0.0, 0.0, 0.0],
                "homed_axes": "",
                "print_time": round(self.total_duration, 3),
                "estimated_print_time": round(self.total_duration, 3),
                "max_velocity": 300.0,
                "max_accel": 3000.0,
                "minimum_cruise_ratio": 0.5,
                "square_corner_velocity": 5.0,
            },
            "configfile": {
                "config": {
                    "printer": {"kinematics": "cartesian", "max_velocity": "300"},
                    "virtual_sdcard": {"path": str(self.gcodes_dir)},
                    "pause_resume": {},
                    "display_status": {},
                },
                "settings": {
                    "printer": {
                        "kinematics": "cartesian",
                        "max_velocity": 300.0,
                        "max_accel": 3000.0,
                        "square_corner_velocity": 5.0,
                    },
                    "virtual_sdcard": {"path": str(self.gcodes_dir)},
                },
                "save_config_pending": False,
            },
        }

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Listen on the socket from a background thread; return once it listens."""
        self._thread = threading.Thread(target=self._run, name="klippy-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the Klippy emulator did not start")

    def stop(self) -> None:
        """Close every connection and the socket."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(10)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def call(self, fn: Any, *args: Any) -> Any:
        """Run fn(*args) on the emulator's loop and return its result (for tests)."""
        assert self._loop is not None
        done: threading.Event = threading.Event()
        box: list[Any] = []

        def run() -> None:
            box.append(fn(*args))
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)
        return box[0] if box else None

    def shutdown(self, message: str) -> None:
        """Put Klippy into shutdown, as an MCU fault or thermal runaway does."""
        self.call(self._shutdown, message)

    def reset(self) -> None:
        """Back to `ready` and idle, with no print (between tests)."""
        self.call(self._restart)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.socket_path), limit=20 * 1024 * 1024
        )
        pusher = asyncio.create_task(self._push_loop())
        self._ready.set()
        await self._stop.wait()
        pusher.cancel()
        if self._print_task is not None:
            self._print_task.cancel()
        for client in list(self._clients):
            client.writer.close()
        self._server.close()

    # -- the protocol ----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(writer)
        self._clients.append(client)
        try:
            while True:
                try:
                    data = await reader.readuntil(ETX)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                try:
                    request = json.loads(data[:-1])
                except ValueError:
                    continue  # Klippy logs and drops what it cannot decode
                self.received.append(request)
                answer: dict[str, Any] = {"id": request.get("id")}
                try:
                    answer["result"] = self._handle(
                        client, str(request.get("method")), request.get("params") or {}
                    )
                except KlippyRequestError as exc:
                    answer["error"] = {"error": "WebRequestError", "message": str(exc)}
                self._send(client, answer)
        finally:
            self._clients.remove(client)
            writer.close()

    def _send(self, client: _Client, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            client.writer.write(json.dumps(message).encode() + ETX)

    def _handle(self, client: _Client, method: str, params: dict[str, Any]) -> Any:
        if method == "info":
            return {
                "state": self.state,
                "state_message": self.state_message,
                "hostname": "emulated-klippy",
                "klipper_path": str(self.klipper_path),
                "python_path": "/usr/bin/python3",
                "process_id": os.getpid(),
                "user_id": os.getuid(),
                "group_id": os.getgid(),
                "log_file": str(self.gcodes_dir.parent / "logs" / "klippy.log"),
                "config_file": str(self.gcodes_dir.parent / "config" / "printer.cfg"),
                "software_version": VERSION,
                "cpu_info": "emulated",
                "app": "Klipper",
            }
        if method == "list_endpoints":
            return {
                "endpoints": [
                    "list_endpoints",
                    "info",
                    "emergency_stop",
                    "register_remote_method",
                    "objects/list",
                    "objects/query",
                    "objects/subscribe",
                    "gcode/help",
                    "gcode/script",
                    "gcode/restart",
                    "gcode/firmware_restart",
                    "gcode/subscribe_output",
                    "pause_resume/pause",
                    "pause_resume/resume",
                    "pause_resume/cancel",
                ]
            }
        if method == "objects/list":
            return {"objects": list(self.objects())}
        if method in ("objects/query", "objects/subscribe"):
            wanted: dict[str, list[str] | None] = params.get("objects") or {}
            status = self._select(wanted)
            if method == "objects/subscribe":
                template = params.get("response_template") or {}
                client.subscription = dict(wanted)
                client.sub_method = template.get("method")
                client.last_sent = json.loads(json.dumps(status))
            return {"eventtime": time.monotonic(), "status": status}
        if method == "gcode/subscribe_output":
            client.gcode_method = (params.get("response_template") or {}).get("method")
            return {}
        if method == "register_remote_method":
            return {}
        if method == "gcode/help":
            return {
                "SDCARD_PRINT_FILE": "Loads a SD file and starts the print",
                "PAUSE": "Pauses the current print",
                "RESUME": "Resumes the print from a pause",
                "CANCEL_PRINT": "Cancel the current print",
            }
        if method == "emergency_stop":
            self._shutdown("Shutdown due to webhooks request")
            return {}
        if method in ("gcode/restart", "gcode/firmware_restart"):
            self._restart()
            return {}
        if method == "gcode/script":
            for line in str(params.get("script") or "").splitlines():
                self._gcode(line)
            return {}
        if method.startswith("pause_resume/"):
            self._gcode(
                {"pause": "PAUSE", "resume": "RESUME", "cancel": "CANCEL_PRINT"}.get(
                    method.split("/", 1)[1], "?"
                )
            )
            return {}
        raise KlippyRequestError(f"No registered endpoint '{method}'")

    def _select(self, wanted: dict[str, list[str] | None]) -> dict[str, dict[str, Any]]:
        every = self.objects()
        out: dict[str, dict[str, Any]] = {}
        for name, fields in wanted.items():
            if name not in every:
                continue
            values = every[name]
            out[name] = values if fields is None else {k: values[k] for k in fields if k in values}
        return out

    def _gcode(self, raw: str) -> None:
        line = _clean(raw)
        if not line:
            return
        word = line.split()[0].upper()
        if word == "M112":
            self._shutdown("Shutdown due to M112 command")
            return
        if word in ("FIRMWARE_RESTART", "RESTART"):
            self._restart()
            return
        if self.state != "ready":
            raise KlippyRequestError(
                "Printer is shutdown"
                if self.state == "shutdown"
                else (f"Printer is not ready: {self.state_message}")
            )
        if word == "SDCARD_PRINT_FILE":
            self._start_print(line)
        elif word == "PAUSE":
            if self.print_state != "printing":
                raise KlippyRequestError(
                    "Print is not active" if not self.paused else "Print already paused"
                )
            self.paused = True
            self.print_state = "paused"
        elif word == "RESUME":
            if not self.paused:
                raise KlippyRequestError("Print is not paused, resume aborted")
            self.paused = False
            self.print_state = "printing"
        elif word == "CANCEL_PRINT":
            if self.print_state in ("printing", "paused"):
                self._end_print("cancelled")
        elif word in ("M104", "M109", "M140", "M190"):
            target = 0.0
            for part in line.split()[1:]:
                if part[:1].upper() == "S":
                    with contextlib.suppress(ValueError):
                        target = float(part[1:])
            heater = self.bed if word in ("M140", "M190") else self.extruder
            heater["target"] = target
            heater["temperature"] = target if target else 21.0

    def _start_print(self, line: str) -> None:
        if self.print_state in ("printing", "paused"):
            raise KlippyRequestError("SD busy")
        m = _FILENAME.search(line)
        if not m:
            raise KlippyRequestError("Error on 'SDCARD_PRINT_FILE': missing FILENAME")
        name = (m["q"] if m["q"] is not None else m["p"]).replace('\\"', '"')
        path = self.gcodes_dir / name
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            raise KlippyRequestError(f'Unable to open file "{name}"') from None
        self.filename = name
        self.lines = [c for c in (_clean(raw) for raw in text.splitlines()) if c]
        self.file_size = path.stat().st_size
        if self.speed_factor:
            settings = self.objects()["configfile"]["settings"]
            limits = limits_from_dict(configfile_motion_limits(settings, "emulator") or {})
            self.line_times = [t / self.speed_factor for t in planned_times(self.lines, limits)]
        else:
            self.line_times = [self.line_time_s] * len(self.lines)
        self.done = 0
        self.print_duration = self.total_duration = 0.0
        self.print_message = ""
        self.paused = False
        self.print_state = "printing"
        if self._print_task is not None:
            self._print_task.cancel()
        self._print_task = asyncio.get_running_loop().create_task(self._run_print())

    async def _run_print(self) -> None:
        tick = 0.01
        budget = 0.0  # time the print may still spend on lines in this tick
        while self.print_state in ("printing", "paused") and self.state == "ready":
            await asyncio.sleep(tick)
            self.total_duration += tick
            if self.print_state != "printing":
                continue
            self.print_duration += tick
            budget += tick
            while self.done < len(self.lines) and budget >= self.line_times[self.done]:
                budget -= self.line_times[self.done]
                self._gcode_in_print(self.lines[self.done])
                self.done += 1
            if self.done >= len(self.lines):
                self._end_print("complete")

    def _gcode_in_print(self, line: str) -> None:
        with contextlib.suppress(KlippyRequestError):
            word = line.split()[0].upper()
            if word in ("M104", "M109", "M140", "M190"):
                self._gcode(line)

    def _end_print(self, state: str) -> None:
        self.print_state = state
        self.paused = False
        task, self._print_task = self._print_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _shutdown(self, message: str) -> None:
        self.state = "shutdown"
        self.state_message = (
            f"{message}\nOnce the underlying issue is corrected, use the\n"
            '"FIRMWARE_RESTART" command to reset the firmware, reload the\n'
            "config, and restart the host software.\nPrinter is shutdown\n"
        )
        self.extruder["target"] = self.bed["target"] = 0.0
        self._push_now()
        for client in self._clients:
            if client.gcode_method:
                self._send(
                    client,
                    {"method": client.gcode_method, "params": {"response": f"!! {message}"}},
                )

    def _restart(self) -> None:
        if self._print_task is not None:
            self._print_task.cancel()
            self._print_task = None
        self._reset_state()
        self._push_now()

    # -- pushes ----------------------------------------------------------------------------

    async def _push_loop(self) -> None:
        while True:
            await asyncio.sleep(self.push_interval_s)
            self._push_now()

    def _push_now(self) -> None:
        for client in self._clients:
            if not client.sub_method or not client.subscription:
                continue
            status = self._select(client.subscription)
            diff: dict[str, dict[str, Any]] = {}
            for name, values in status.items():
                before = client.last_sent.get(name, {})
                changed = {k: v for k, v in values.items() if before.get(k) != v}
                if changed:
                    diff[name] = changed
                    client.last_sent.setdefault(name, {}).update(json.loads(json.dumps(changed)))
            if diff:
                self._send(
                    client,
                    {
                        "method": client.sub_method,
                        "params": {"eventtime": time.monotonic(), "status": diff},
                    },
                )
