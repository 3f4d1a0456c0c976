"""sim-marlin: a Marlin 2.x firmware simulator on a real pty, and the driver that starts one.

It answers byte for byte as Marlin does on USB serial, so the `marlin` driver cannot tell
it from a printer:

- line numbers and checksums with Marlin's own errors (`Error:checksum mismatch, Last
  Line: n`, `Error:Line Number is not Last Line Number+1, Last Line: n`, `Resend: n`, `ok`);
  after an error the receive buffer is flushed, as `GCodeQueue::gcode_line_error` does;
- a 4-slot command queue (BUFSIZE) fed from a 128-byte receive buffer: the firmware takes
  bytes out of it only while the queue has room, and bytes that arrive when it is full are
  lost, as in the serial ISR; lines are acknowledged after they run;
- a 16-block planner (15 usable blocks) that plans as Marlin does, with the analyser's own
  planner (`drivers.planner.MotionQueue`): per-axis feed and acceleration limits, M204
  accelerations, classic jerk or junction deviation, look-ahead bounded by the buffer;
  M201/M203/M204/M205 change the limits as the firmware does (M205 X/Y switch to classic
  jerk, as PrusaSlicer's model of Marlin assumes); G2/G3 arcs (I/J or R, XY plane) are cut
  into segments as Marlin 2's `plan_arc` does (`drivers.planner.marlin_arc_segments`);
- the emergency parser (M112, M108, M410 act the moment they arrive);
- heaters that move toward their targets, M109/M190 waits with `busy: processing`, and the
  host keepalive (`busy: processing` every 2 s) while a move waits for room in a full
  planner or M400 waits for the moves to end;
- M115 capability lines, M155 auto-reports, ADVANCED_OK (`ok N.. P.. B..`) if asked for;
- the link's byte rate (`baud`, 10 bits a byte) in both directions;
- faults: corrupted or dropped lines, silence, a closed port, thermal runaway, MINTEMP,
  MAXTEMP, kill; `//action:` lines on demand.

It records every command it executed (`executed`), so tests can check that the firmware ran
exactly the program, line for line. Run it alone with `python -m drivers.sim.marlin`.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from drivers.marlin import MarlinDriver
from drivers.planner import MachineLimits, MotionQueue, arc_geometry, marlin_arc_segments
from drivers.sim.pty import PtyPair

log = logging.getLogger(__name__)

# Marlin's own strings (Marlin/src/core/language.h)
ERR_LINE_NO = "Line Number is not Last Line Number+1, Last Line: "
ERR_CHECKSUM = "checksum mismatch, Last Line: "
ERR_NO_CHECKSUM = "No Checksum with line number, Last Line: "
ERR_NO_LINENUMBER = "No Line Number with checksum, Last Line: "
ERR_KILLED = "Printer halted. kill() called!"

FAULTS = {
    "thermal_runaway": "Thermal Runaway, system stopped! Heater_ID: 0",
    "mintemp": "MINTEMP triggered, system stopped! Heater_ID: 0",
    "maxtemp": "MAXTEMP triggered, system stopped! Heater_ID: 0",
    "kill": None,
    "silence": None,
    "disconnect": None,
}

_PARAM_RE = re.compile(r"([A-Z])\s*(-?\d*\.?\d+)")
_CODE_RE = re.compile(r"^([GMT])(\d+)")
#: Codes Marlin accepts without a word of output (settings, fan, units, progress, motors).
_QUIET = frozenset(
    {"G21", "G90", "G91", "G92", "M17", "M18", "M73", "M75", "M76", "M77", "M82", "M83"}
    | {"M84", "M92", "M106", "M107", "M117", "M206", "M220"}
    | {"M221", "M302", "M486", "M500", "M501", "M502", "M907"}
)


@dataclass
class SimOptions:
    """What a simulated printer is like; every field can be set from driver settings."""

    speed_factor: float = 1.0  # motion and heating time divided by this; 0 or inf: instant
    baud: int = 115200  # bytes take 10 bits each in both directions; 0: no limit
    bufsize: int = 4  # command queue slots (Marlin BUFSIZE)
    rx_buffer: int = 128  # receive buffer bytes (RX_BUFFER_SIZE); holds one less
    planner_blocks: int = 16
    autoreport_temp: bool = True
    advanced_ok: bool = False
    emergency_parser: bool = True
    send_wait: bool = False  # print "wait" when idle, as some forks and VirtualPrinter do
    busy_interval: float = 2.0  # host keepalive: "echo:busy: processing" every n s
    home_s: float = 2.0  # G28 time before speed_factor
    heat_rate: float = 10.0  # hotend degrees C per second before speed_factor
    bed_heat_rate: float = 2.0
    ambient: float = 21.0
    corrupt_rate: float = 0.0  # chance that a received line has one byte damaged
    drop_rate: float = 0.0  # chance that a received line is lost entirely
    corrupt_lines: tuple[int, ...] = ()  # line numbers damaged the first time they arrive
    drop_lines: tuple[int, ...] = ()  # line numbers lost the first time they arrive
    seed: int | None = None
    fault: str | None = None  # one of FAULTS, triggered when line `fault_at_line` runs
    fault_at_line: int | None = None
    firmware_name: str = "Marlin 2.1.2.4 (sim-marlin)"
    # Motion settings M503 reports (Marlin's configuration defaults for a Cartesian printer);
    # M201/M203/M204/M205/M900 change them. junction_deviation None: classic jerk (M205 X..).
    max_feedrate: tuple[float, float, float, float] = (300.0, 300.0, 5.0, 25.0)
    max_acceleration: tuple[float, float, float, float] = (3000.0, 3000.0, 100.0, 10000.0)
    print_acceleration: float = 3000.0
    retract_acceleration: float = 3000.0
    travel_acceleration: float = 3000.0
    junction_deviation: float | None = 0.013
    max_jerk: tuple[float, float, float, float] = (10.0, 10.0, 0.3, 5.0)
    min_segment_time_us: float = 20000.0
    linear_advance_k: float = 0.0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> SimOptions:
        """Pick the simulator's options out of a driver's settings."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in settings.items():
            if key not in known:
                continue
            if key in ("corrupt_lines", "drop_lines"):
                value = tuple(int(v) for v in value)
            elif key in ("max_feedrate", "max_acceleration", "max_jerk"):
                value = tuple(float(v) for v in value)
            values[key] = value
        opts = cls(**values)
        if opts.fault is not None and opts.fault not in FAULTS:
            raise ValueError(f"unknown fault {opts.fault!r}; known: {', '.join(FAULTS)}")
        return opts


def _limits_from_options(opts: SimOptions) -> MachineLimits:
    """Return the planner limits the options describe (Marlin/Prusa defaults otherwise)."""
    base = MachineLimits(block_buffer_size=opts.planner_blocks)
    changes = {
        name: getattr(opts, name)
        for name in (
            "max_feedrate",
            "max_acceleration",
            "max_jerk",
            "print_acceleration",
            "retract_acceleration",
            "travel_acceleration",
            "junction_deviation",
        )
        if hasattr(opts, name)
    }
    return replace(base, **changes)


class _Killed(Exception):
    """The firmware halted while a command ran."""


@dataclass
class _Heater:
    actual: float
    target: float = 0.0
    rate: float = 10.0
    power: int = 0


@dataclass
class _Stats:
    lines_received: int = 0
    lines_corrupted: int = 0
    lines_dropped: int = 0
    rx_overflow_bytes: int = 0
    errors: int = 0
    resend_requests: int = 0
    emergency: list[str] = field(default_factory=list)
    path_mm: float = 0.0  # XYZ distance of every move planned (arcs as their segments)


class MarlinSimulator:
    """A simulated Marlin printer serving a pty; `path` is the device a driver opens."""

    def __init__(self, options: SimOptions | None = None, **overrides: Any) -> None:
        self.options = options or SimOptions.from_settings(overrides)
        if options is not None and overrides:
            self.options = SimOptions.from_settings({**vars(options), **overrides})
        opts = self.options
        self.executed: list[str] = []  # every command run, without N and checksum
        self.error_log: deque[str] = deque(maxlen=100)  # why lines were rejected, for tests
        self.unknown: list[str] = []  # lines that were not G-code (cut tails of lines)
        self.stats = _Stats()
        self.path: str | None = None
        self._rng = random.Random(opts.seed)
        self._pty: PtyPair | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        # receive side: host bytes -> wire (baud) -> emergency parser -> rx buffer -> queue
        self._host_acc = bytearray()
        self._wire: deque[tuple[float, bytes]] = deque()
        self._wire_clock = 0.0
        self._rx = bytearray()
        self._line = bytearray()
        self._ep_line = bytearray()
        self._queue: deque[tuple[int | None, str]] = deque()
        self._last_n = 0
        self._corrupt_once = set(opts.corrupt_lines)
        self._drop_once = set(opts.drop_lines)
        # transmit side
        self._tx_clock = 0.0
        self._txbuf = bytearray()
        self._writer_registered = False
        # machine
        self._killed = False
        self._silent = False
        self._closed = False
        self._limits = _limits_from_options(opts)
        self._jerk_set = False
        self._planner = MotionQueue(self._limits)
        self._motion_at = time.monotonic()
        self._pos = {"X": 0.0, "Y": 0.0, "Z": 0.0, "E": 0.0}
        self._next_busy = math.inf  # when the running command next says "busy: processing"
        self._relative = False
        self._relative_e = False
        self._feed = 1500.0  # mm/min
        self._heaters = {
            "T": _Heater(opts.ambient, rate=opts.heat_rate),
            "B": _Heater(opts.ambient, rate=opts.bed_heat_rate),
        }
        self._temps_at = time.monotonic()
        self._wait_for_heatup = False
        self._autoreport_s = 0.0
        self._next_autoreport = 0.0

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> str:
        """Create the pty, start the firmware on this event loop and return the pty path."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._pty = PtyPair()
        self.path = self._pty.path
        self._loop.add_reader(self._pty.master_fd, self._on_readable)
        self._tasks = [
            asyncio.create_task(self._firmware(), name="sim-marlin firmware"),
            asyncio.create_task(self._reporter(), name="sim-marlin reporter"),
        ]
        for line in ("start", "echo:Marlin 2.1.2.4", "echo: Last Updated: 2025-06-27"):
            self._send(line)
        return self.path

    async def aclose(self) -> None:
        """Stop the firmware and close the pty."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        self._close_pty()

    def _close_pty(self) -> None:
        self._closed = True
        if self._pty is not None and self._loop is not None and self._pty.master_fd >= 0:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._pty.master_fd)
            with contextlib.suppress(Exception):
                self._loop.remove_writer(self._pty.master_fd)
            self._pty.close()

    def start_in_thread(self, timeout: float = 5.0) -> str:
        """Run the simulator on its own event loop in a daemon thread; return the pty path."""
        ready = threading.Event()
        errors: list[BaseException] = []

        async def main() -> None:
            try:
                await self.open()
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            self._stop = asyncio.Event()
            ready.set()
            try:
                await self._stop.wait()
            finally:
                await self.aclose()

        self._thread = threading.Thread(
            target=lambda: asyncio.run(main()), name="sim-marlin", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"sim-marlin did not start within {timeout:.0f} s")
        if errors:
            raise RuntimeError(f"sim-marlin could not start: {errors[0]}") from errors[0]
        assert self.path is not None
        return self.path

    def stop_thread(self, timeout: float = 5.0) -> None:
        """Stop a simulator started with start_in_thread (blocks until it has stopped)."""
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join(timeout)
        self._thread = None

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on the simulator's loop (safe from any thread)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the simulator is not running")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    # -- controls for tests (thread-safe) -------------------------------------------------

    def moving(self, timeout: float = 5.0) -> bool:
        """Tell whether planned moves are still running (thread-safe)."""
        done: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def check() -> None:
            self._prune_planner()
            done.set_result(bool(self._planner.blocks))

        if self._loop is None:
            return False
        self.call(check)
        return done.result(timeout)

    def inject(self, line: str) -> None:
        """Print a line as the firmware would (e.g. an echo: or a //action: line)."""
        self.call(self._send, line)

    def action(self, name: str) -> None:
        """Print `//action:<name>`, as the printer's own menu or buttons do."""
        self.inject(f"//action:{name}")

    def fault(self, kind: str) -> None:
        """Trigger a fault now: one of thermal_runaway, mintemp, maxtemp, kill, silence,
        disconnect."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULTS)}")
        self.call(self._fault, kind)

    def set_options(self, **changes: Any) -> None:
        """Change options while running (e.g. start corrupting lines)."""

        def apply() -> None:
            for key, value in changes.items():
                if not hasattr(self.options, key):
                    raise ValueError(f"unknown simulator option {key!r}")
                setattr(self.options, key, value)
            self._corrupt_once.update(self.options.corrupt_lines)
            self._drop_once.update(self.options.drop_lines)

        self.call(apply)

    @property
    def killed(self) -> bool:
        """Return whether the firmware has halted."""
        return self._killed

    # -- receive path ---------------------------------------------------------------------

    def _on_readable(self) -> None:
        assert self._pty is not None
        try:
            data = os.read(self._pty.master_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            return  # nobody has the port open
        if not data or self._silent or self._killed or self._closed:
            return
        self._host_acc.extend(data)
        while True:
            idx = self._host_acc.find(b"\n")
            if idx < 0:
                break
            line = bytes(self._host_acc[: idx + 1])
            del self._host_acc[: idx + 1]
            line = self._inject_link_faults(line)
            if line:
                self._put_on_wire(line)

    def _inject_link_faults(self, line: bytes) -> bytes:
        opts = self.options
        self.stats.lines_received += 1
        number = None
        match = re.match(rb"N(\d+)", line)
        if match:
            number = int(match.group(1))
        if (number is not None and number in self._drop_once) or (
            opts.drop_rate and self._rng.random() < opts.drop_rate
        ):
            if number is not None:
                self._drop_once.discard(number)
            self.stats.lines_dropped += 1
            return b""
        if (number is not None and number in self._corrupt_once) or (
            opts.corrupt_rate and self._rng.random() < opts.corrupt_rate
        ):
            if number is not None:
                self._corrupt_once.discard(number)
            body = bytearray(line[:-1])
            if body:
                i = self._rng.randrange(len(body))
                choices = [c for c in b"0123456789XYZEGMN .-" if c != body[i]]
                body[i] = self._rng.choice(choices)
                self.stats.lines_corrupted += 1
            line = bytes(body) + b"\n"
        return line

    def _byte_time(self) -> float:
        return 10.0 / self.options.baud if self.options.baud > 0 else 0.0

    def _put_on_wire(self, data: bytes) -> None:
        assert self._loop is not None
        bt = self._byte_time()
        if bt == 0.0:
            for byte in data:
                self._uart_byte(byte)
            self._wake.set()
            return
        now = self._loop.time()
        start = max(now, self._wire_clock)
        self._wire_clock = start + len(data) * bt
        self._wire.append((start, data))
        self._loop.call_at(self._wire_clock, self._deliver)

    def _deliver(self) -> None:
        """Move the bytes that have crossed the wire by now into the UART."""
        assert self._loop is not None
        now = self._loop.time()
        bt = self._byte_time()
        while self._wire:
            start, data = self._wire[0]
            arrived = len(data) if bt == 0.0 else min(len(data), int((now - start) / bt + 1e-6))
            if arrived <= 0:
                break
            for byte in data[:arrived]:
                self._uart_byte(byte)
            if arrived < len(data):
                self._wire[0] = (start + arrived * bt, data[arrived:])
                self._loop.call_at(start + len(data) * bt, self._deliver)
                break
            self._wire.popleft()
        self._wake.set()

    def _uart_byte(self, byte: int) -> None:
        if self._killed or self._silent:
            return
        if self.options.emergency_parser:
            self._emergency_parse(byte)
            if self._killed:
                return
        if len(self._rx) >= self.options.rx_buffer - 1:
            # The main loop moves lines into free queue slots as fast as they arrive; do
            # that now in case this thread was starved, then drop what still has no room.
            self._fill_queue()
        if len(self._rx) < self.options.rx_buffer - 1:
            self._rx.append(byte)
        else:
            self.stats.rx_overflow_bytes += 1  # the ISR has nowhere to put it: lost

    def _emergency_parse(self, byte: int) -> None:
        if byte in (10, 13):
            text = self._ep_line.decode("latin-1").strip()
            self._ep_line.clear()
            text = re.sub(r"^N\d+\s*", "", text)
            code = text[:4]
            if code == "M112":
                self.stats.emergency.append("M112")
                self._kill(None)
            elif code == "M108":
                self.stats.emergency.append("M108")
                self._wait_for_heatup = False
            elif code == "M410":
                self.stats.emergency.append("M410")
                self._planner.clear()
        elif len(self._ep_line) < 96:
            self._ep_line.append(byte)

    def _take_line(self) -> bytes | None:
        """Read bytes from the rx buffer until a line is complete, as get_serial_commands."""
        while self._rx:
            byte = self._rx.pop(0)
            if byte in (10, 13):
                if self._line:
                    line = bytes(self._line)
                    self._line.clear()
                    return line
                continue  # an empty line: skipped without a reply
            if len(self._line) < 95:  # MAX_CMD_SIZE 96
                self._line.append(byte)
        return None

    def _process_line(self, raw: bytes) -> tuple[int | None, str] | None:
        """Validate one line as GCodeQueue does; return (N, command) to queue or None."""
        text = raw.decode("latin-1")
        if ";" in text:
            text = text.split(";", 1)[0]
        text = text.strip()
        if not text:
            return None
        number: int | None = None
        if text.startswith("N"):
            npos = 0
            is_m110 = "M110" in text
            if is_m110:
                n2 = text.find("N", 4)
                if n2 >= 0:
                    npos = n2
            number = _strtol(text[npos + 1 :])
            if number != self._last_n + 1 and not is_m110:
                self.error_log.append(f"lineno last={self._last_n} got {text!r}")
                self._line_error(ERR_LINE_NO)
                return None
            apos = text.rfind("*")
            if apos < 0:
                self.error_log.append(f"nochecksum last={self._last_n} got {text!r}")
                self._line_error(ERR_NO_CHECKSUM)
                return None
            cs = 0
            for ch in text[:apos].encode("latin-1"):
                cs ^= ch
            if _strtol(text[apos + 1 :]) != cs:
                self.error_log.append(f"checksum last={self._last_n} got {text!r}")
                self._line_error(ERR_CHECKSUM)
                return None
            self._last_n = number
            body = re.sub(r"^N-?\d+\s*", "", text[:apos]).strip()
            return number, body
        if "*" in text:
            self.error_log.append(f"nolinenumber last={self._last_n} got {text!r}")
            self._line_error(ERR_NO_LINENUMBER)
            return None
        return None, text

    def _line_error(self, message: str) -> None:
        self.stats.errors += 1
        self.stats.resend_requests += 1
        self._send(f"Error:{message}{self._last_n}")
        self._rx.clear()  # "Clear out the RX buffer" (gcode_line_error)
        self._line.clear()
        self._send(f"Resend: {self._last_n + 1}")
        self._send("ok")

    # -- firmware main loop ---------------------------------------------------------------

    async def _firmware(self) -> None:
        assert self._loop is not None
        while True:
            if self._killed or self._silent or self._closed:
                await asyncio.Event().wait()  # a halted board does nothing until reset
            self._fill_queue()
            if self._queue:
                number, command = self._queue[0]
                try:
                    await self._execute(number, command)
                except _Killed:
                    continue
                if self._queue:
                    self._queue.popleft()
                continue
            self._wake.clear()
            if self.options.send_wait:
                try:
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                except TimeoutError:
                    self._send("wait")
            else:
                await self._wake.wait()

    def _fill_queue(self) -> None:
        """Move complete lines from the rx buffer into free queue slots (get_serial_commands)."""
        while len(self._queue) < self.options.bufsize:
            raw = self._take_line()
            if raw is None:
                return
            entry = self._process_line(raw)
            if entry is not None:
                self._queue.append(entry)
        if self._queue:
            self._wake.set()

    async def _reporter(self) -> None:
        """Print auto-reported temperatures (M155) while the board runs."""
        while True:
            await asyncio.sleep(0.1)
            if self._autoreport_s <= 0 or self._killed or self._silent:
                continue
            now = time.monotonic()
            if now >= self._next_autoreport:
                self._next_autoreport = now + self._autoreport_s
                self._send(" " + self._heater_states())

    def _ok(self, number: int | None) -> None:
        if not self.options.advanced_ok:
            self._send("ok")
            return
        self._prune_planner()
        # Marlin's planner.moves_free(): the ring holds BLOCK_BUFFER_SIZE - 1 blocks.
        free = self._planner.capacity - len(self._planner)
        slots = self.options.bufsize - len(self._queue)  # the running command still counts
        head = f"ok N{number} " if number is not None else "ok "
        self._send(f"{head}P{free} B{slots}")

    async def _execute(self, number: int | None, command: str) -> None:
        match = _CODE_RE.match(command.upper())
        if match is None:
            # The tail of a line cut by an rx flush ("88" after "*") runs as an unknown
            # command, exactly as on a real board; it is kept apart from `executed`.
            self.unknown.append(command)
            self._send(f'echo:Unknown command: "{command}"')
            self._ok(number)
            return
        self.executed.append(command)
        self._next_busy = time.monotonic() + max(0.05, self.options.busy_interval)
        code = f"{match.group(1)}{int(match.group(2))}"
        params = {k: float(v) for k, v in _PARAM_RE.findall(command[len(code) :].upper())}
        say_ok = True
        if code in ("G0", "G1"):
            await self._move(params)
        elif code in ("G2", "G3"):
            await self._arc(params, clockwise=code == "G2")
        elif code == "G4":
            await self._wait_moves()
            dwell = params.get("P", 0.0) / 1000.0 if "P" in params else params.get("S", 0.0)
            await self._busy_sleep(self._scale(dwell))
        elif code in ("G28", "G29"):
            await self._wait_moves()
            await self._busy_sleep(self._scale(self.options.home_s * (1 if code == "G28" else 3)))
            if code == "G28":
                for axis in ("X", "Y", "Z"):
                    self._pos[axis] = 0.0
        elif code == "G90":
            self._relative = self._relative_e = False
        elif code == "G91":
            self._relative = self._relative_e = True
        elif code == "M82":
            self._relative_e = False
        elif code == "M83":
            self._relative_e = True
        elif code == "G92":
            for axis in ("X", "Y", "Z", "E"):
                if axis in params:
                    self._pos[axis] = params[axis]
        elif code in ("M104", "M109", "M140", "M190"):
            heater = self._heaters["B" if code in ("M140", "M190") else "T"]
            target = params.get("S", params.get("R"))
            if target is not None:
                self._update_temps()
                heater.target = target
            if code in ("M109", "M190") and target is not None:
                await self._wait_heater(heater, cool_too="R" in params)
        elif code == "M105":
            self._send("ok " + self._heater_states())
            say_ok = False  # M105 prints its own "ok" (no ADVANCED_OK fields)
        elif code == "M110":
            self._last_n = int(params.get("N", 0))
        elif code == "M112":
            self._kill(None)
            raise _Killed
        elif code == "M114":
            p = self._pos
            self._send(
                f"X:{p['X']:.2f} Y:{p['Y']:.2f} Z:{p['Z']:.2f} E:{p['E']:.2f} "
                f"Count X:{int(p['X'] * 80)} Y:{int(p['Y'] * 80)} Z:{int(p['Z'] * 400)}"
            )
        elif code == "M115":
            self._m115()
        elif code == "M503":
            self._m503()
        elif code in ("M201", "M203", "M204", "M205", "M900"):
            self._set_motion(code, params)  # what M503 reports
            if code != "M900":
                self._set_limits(code, params)  # what the planner moves with
        elif code == "M155":
            self._autoreport_s = params.get("S", 0.0)
            self._next_autoreport = time.monotonic() + self._autoreport_s
        elif code == "M400":
            await self._wait_moves()
        elif code == "M108":
            self._wait_for_heatup = False
        elif code == "M118":
            text = command[4:].strip()
            if text.startswith("A1 "):
                self._send("//" + text[3:].strip())
            elif text.startswith("E1 "):
                self._send("echo:" + text[3:].strip())
            else:
                self._send(text)
        elif code in ("T0",):
            self._send("echo:Active Extruder: 0")
        elif code not in _QUIET:
            self._send(f'echo:Unknown command: "{command}"')
        if self.options.fault is not None and number == self.options.fault_at_line:
            self._fault(self.options.fault)
            raise _Killed
        if say_ok:
            self._ok(number)

    def _m115(self) -> None:
        opts = self.options
        self._send(
            f"FIRMWARE_NAME:{opts.firmware_name} SOURCE_CODE_URL:github.com/MarlinFirmware/Marlin"
            " PROTOCOL_VERSION:1.0 MACHINE_TYPE:sim-marlin EXTRUDER_COUNT:1"
            " UUID:cede2a2f-41a2-4748-9b12-c55c62f367ff"
        )
        caps = {
            "SERIAL_XON_XOFF": False,
            "BINARY_FILE_TRANSFER": False,
            "EEPROM": False,
            "VOLUMETRIC": True,
            "AUTOREPORT_POS": False,
            "AUTOREPORT_TEMP": opts.autoreport_temp,
            "PROGRESS": False,
            "PRINT_JOB": True,
            "AUTOLEVEL": False,
            "RUNOUT": False,
            "Z_PROBE": False,
            "LEVELING_DATA": False,
            "BUILD_PERCENT": False,
            "SOFTWARE_POWER": False,
            "TOGGLE_LIGHTS": False,
            "CASE_LIGHT_BRIGHTNESS": False,
            "EMERGENCY_PARSER": opts.emergency_parser,
            "HOST_ACTION_COMMANDS": True,
            "PROMPT_SUPPORT": False,
            "SDCARD": False,
            "AUTOREPORT_SD_STATUS": False,
            "THERMAL_PROTECTION": True,
            "MOTION_MODES": False,
            "ARCS": True,
            "ADVANCED_OK": opts.advanced_ok,
        }
        for name, value in caps.items():
            self._send(f"Cap:{name}:{int(value)}")

    def _set_motion(self, code: str, params: Mapping[str, float]) -> None:
        """Change the motion settings as M201/M203/M204/M205/M900 do."""
        o = self.options

        def axes(old: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
            x, y, z, e = (params.get(a, v) for a, v in zip("XYZE", old, strict=True))
            return (x, y, z, e)

        if code == "M201":
            o.max_acceleration = axes(o.max_acceleration)
        elif code == "M203":
            o.max_feedrate = axes(o.max_feedrate)
        elif code == "M204":
            o.print_acceleration = params.get("P", params.get("S", o.print_acceleration))
            o.retract_acceleration = params.get("R", o.retract_acceleration)
            o.travel_acceleration = params.get("T", params.get("S", o.travel_acceleration))
        elif code == "M205":
            if "J" in params and o.junction_deviation is not None:
                o.junction_deviation = params["J"]
            if o.junction_deviation is None:
                o.max_jerk = axes(o.max_jerk)
            o.min_segment_time_us = params.get("B", o.min_segment_time_us)
        elif code == "M900":
            o.linear_advance_k = params.get("K", o.linear_advance_k)

    def _m503(self) -> None:
        """Report the settings as Marlin 2.1's M503 does (MarlinSettings::report)."""
        o = self.options

        def xyze(values: tuple[float, float, float, float]) -> str:
            return " ".join(f"{a}{v:.2f}" for a, v in zip("XYZE", values, strict=True))

        lines = [
            "; Linear Units:",
            "  G21 ; (mm)",
            "; Temperature Units:",
            "  M149 C ; Units in Celsius",
            "; Steps per unit:",
            "  M92 X80.00 Y80.00 Z400.00 E93.00",
            "; Max feedrates (units/s):",
            "  M203 " + xyze(o.max_feedrate),
            "; Max Acceleration (units/s2):",
            "  M201 " + xyze(o.max_acceleration),
            "; Acceleration (units/s2) (P<print-accel> R<retract-accel> T<travel-accel>):",
            f"  M204 P{o.print_acceleration:.2f} R{o.retract_acceleration:.2f} "
            f"T{o.travel_acceleration:.2f}",
        ]
        if o.junction_deviation is not None:
            lines += [
                "; Advanced (B<min_segment_time_us> S<min_feedrate> T<min_travel_feedrate> "
                "J<junc_dev>):",
                f"  M205 B{o.min_segment_time_us:.2f} S0.00 T0.00 J{o.junction_deviation:.3f}",
            ]
        else:
            x, y, z, e = o.max_jerk
            lines += [
                "; Advanced (B<min_segment_time_us> S<min_feedrate> T<min_travel_feedrate> "
                "X<max_x_jerk> Y<max_y_jerk> Z<max_z_jerk> E<max_e_jerk>):",
                f"  M205 B{o.min_segment_time_us:.2f} S0.00 T0.00 X{x:.2f} Y{y:.2f} "
                f"Z{z:.2f} E{e:.2f}",
            ]
        lines += [
            "; Home offset:",
            "  M206 X0.00 Y0.00 Z0.00",
            "; Linear Advance:",
            f"  M900 K{o.linear_advance_k:.2f}",
        ]
        for line in lines:
            self._send("echo:" + line)

    # -- motion and heat ------------------------------------------------------------------

    def _scale(self, seconds: float) -> float:
        sf = self.options.speed_factor
        if sf <= 0 or math.isinf(sf):
            return 0.0
        return seconds / sf

    def motion_limits(self) -> MachineLimits:
        """Return the limits the planner uses now (the defaults, changed by M201-M205)."""
        return self._limits

    def _prune_planner(self) -> None:
        """Run the planner up to now (machine time = wall time x speed_factor)."""
        now = time.monotonic()
        sf = self.options.speed_factor
        if self._planner.blocks and sf > 0 and not math.isinf(sf):
            self._planner.advance((now - self._motion_at) * sf)
        self._motion_at = now

    def _set_limits(self, code: str, params: Mapping[str, float]) -> None:
        """Apply M201/M203/M204/M205 to the planner's limits."""
        lim = self._limits
        axes = ("X", "Y", "Z", "E")
        changes: dict[str, Any] = {}
        if code in ("M201", "M203"):
            name = "max_acceleration" if code == "M201" else "max_feedrate"
            old = getattr(lim, name)
            changes[name] = tuple(params.get(a, old[k]) for k, a in enumerate(axes))
        elif code == "M204":
            if "S" in params:
                changes["print_acceleration"] = changes["travel_acceleration"] = params["S"]
            for letter, name in (("P", "print"), ("R", "retract"), ("T", "travel")):
                if letter in params:
                    changes[f"{name}_acceleration"] = params[letter]
        elif code == "M205":
            jerk = list(lim.max_jerk)
            if "X" in params:
                jerk[0] = jerk[1] = params["X"]
            for k, a in enumerate(axes[1:], start=1):
                if a in params:
                    jerk[k] = params[a]
            changes["max_jerk"] = tuple(jerk)
            if "S" in params:
                changes["min_extrude_feedrate"] = params["S"]
            if "T" in params:
                changes["min_travel_feedrate"] = params["T"]
            if "X" in params or "Y" in params:
                self._jerk_set = True
                changes["junction_deviation"] = None
            elif "J" in params and not self._jerk_set:
                changes["junction_deviation"] = params["J"]
        if changes:
            self._prune_planner()
            self._limits = replace(lim, **changes)
            self._planner.set_limits(self._limits)

    async def _sleep_until(self, when: float) -> None:
        delay = when - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if self._killed:
            raise _Killed

    async def _move(self, params: Mapping[str, float]) -> None:
        if "F" in params and params["F"] > 0:
            self._feed = params["F"]
        delta = {}
        for axis in ("X", "Y", "Z", "E"):
            if axis in params:
                relative = self._relative_e if axis == "E" else self._relative
                target = self._pos[axis] + params[axis] if relative else params[axis]
                delta[axis] = target - self._pos[axis]
                self._pos[axis] = target
        move = (delta.get("X", 0.0), delta.get("Y", 0.0), delta.get("Z", 0.0), delta.get("E", 0.0))
        await self._plan(move)

    def _arc_target(self, params: Mapping[str, float]) -> dict[str, float]:
        target = {}
        for axis in ("X", "Y", "Z", "E"):
            relative = self._relative_e if axis == "E" else self._relative
            value = params.get(axis)
            if value is None:
                target[axis] = self._pos[axis]
            else:
                target[axis] = self._pos[axis] + value if relative else value
        return target

    async def _arc(self, params: Mapping[str, float], clockwise: bool) -> None:
        """Run G2/G3 as Marlin's plan_arc does: straight segments along the arc (XY plane)."""
        if "F" in params and params["F"] > 0:
            self._feed = params["F"]
        start = dict(self._pos)
        end = self._arc_target(params)
        has_ij = "I" in params or "J" in params
        offset = (params.get("I", 0.0), params.get("J", 0.0)) if has_ij else None
        cx, cy, radius, angle = arc_geometry(
            (start["X"], start["Y"]), (end["X"], end["Y"]), offset, params.get("R"), clockwise
        )
        segments = self.arc_segments(radius, angle)
        for k in range(1, segments + 1):
            if k == segments:
                point = end
            else:
                f = k / segments
                c, s = math.cos(angle * f), math.sin(angle * f)
                r0x, r0y = start["X"] - cx, start["Y"] - cy
                point = {
                    "X": cx + r0x * c - r0y * s,
                    "Y": cy + r0x * s + r0y * c,
                    "Z": start["Z"] + (end["Z"] - start["Z"]) * f,
                    "E": start["E"] + (end["E"] - start["E"]) * f,
                }
            move = (
                point["X"] - self._pos["X"],
                point["Y"] - self._pos["Y"],
                point["Z"] - self._pos["Z"],
                point["E"] - self._pos["E"],
            )
            self._pos = dict(point)
            await self._plan(move)

    def arc_segments(self, radius: float, angle: float) -> int:
        """Return how many segments an arc of this radius and travel is cut into now."""
        if radius <= 0 or angle == 0:
            return 1
        return marlin_arc_segments(angle, radius, self._feed / 60.0)

    async def _plan(self, move: tuple[float, float, float, float]) -> None:
        """Queue one straight move in the planner, waiting while the planner is full."""
        self.stats.path_mm += math.sqrt(move[0] ** 2 + move[1] ** 2 + move[2] ** 2)
        sf = self.options.speed_factor
        if not any(move) or sf <= 0 or math.isinf(sf):
            return
        self._prune_planner()
        while self._planner.full:
            await self._sleep_keepalive(time.monotonic() + self._planner.time_to_next() / sf)
            self._prune_planner()
        block = self._planner.make_block(move, self._feed / 60.0)
        if block is not None:
            self._planner.push(block, move)

    async def _wait_moves(self) -> None:
        sf = self.options.speed_factor
        self._prune_planner()
        while self._planner.blocks and sf > 0 and not math.isinf(sf):
            wait = self._planner.time_to_next() / sf
            await self._sleep_keepalive(time.monotonic() + wait)
            self._prune_planner()
        self._planner.clear()

    async def _sleep_keepalive(self, when: float) -> None:
        """Sleep until `when`, saying "busy: processing" as Marlin's host keepalive does.

        Marlin's `host_keepalive()` runs in `idle()`, which also spins while a move waits
        for room in a full planner and while M400 waits: a command that has been running for
        `busy_interval` seconds says so, and again every `busy_interval` seconds.
        """
        interval = max(0.05, self.options.busy_interval)
        while True:
            now = time.monotonic()
            if now >= self._next_busy:
                self._next_busy = now + interval
                self._send("echo:busy: processing")
            if now >= when:
                return
            await self._sleep_until(min(when, self._next_busy))
            if time.monotonic() >= when:
                return

    async def _busy_sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        interval = max(0.05, self.options.busy_interval)
        while True:
            now = time.monotonic()
            if now >= end:
                return
            await self._sleep_until(min(end, now + interval))
            if time.monotonic() < end:
                self._send("echo:busy: processing")

    def _update_temps(self) -> None:
        now = time.monotonic()
        dt = now - self._temps_at
        self._temps_at = now
        instant = self._scale(1.0) == 0.0
        for heater in self._heaters.values():
            goal = heater.target if heater.target > 0 else self.options.ambient
            step = math.inf if instant else heater.rate * dt * self.options.speed_factor
            if abs(goal - heater.actual) <= step:
                heater.actual = goal
            else:
                heater.actual += math.copysign(step, goal - heater.actual)
            heater.power = 127 if heater.target > heater.actual + 0.5 else 0

    def _heater_states(self) -> str:
        self._update_temps()
        t, b = self._heaters["T"], self._heaters["B"]
        return (
            f"T:{t.actual:.2f} /{t.target:.2f} B:{b.actual:.2f} /{b.target:.2f} "
            f"@:{t.power} B@:{b.power}"
        )

    async def _wait_heater(self, heater: _Heater, cool_too: bool) -> None:
        self._wait_for_heatup = True
        last_busy = time.monotonic()
        while self._wait_for_heatup:
            self._update_temps()
            below = heater.actual < heater.target - 1.0
            above = cool_too and heater.actual > heater.target + 1.0
            if not (below or above):
                break
            await self._sleep_until(time.monotonic() + 1.0)
            self._send(" " + self._heater_states() + " W:?")
            if time.monotonic() - last_busy >= self.options.busy_interval:
                last_busy = time.monotonic()
                self._send("echo:busy: processing")
        self._wait_for_heatup = False

    # -- faults ---------------------------------------------------------------------------

    def _fault(self, kind: str) -> None:
        if kind == "silence":
            self._silent = True
            self._queue.clear()
        elif kind == "disconnect":
            self._queue.clear()
            self._close_pty()
        else:
            self._kill(FAULTS[kind])

    def _kill(self, message: str | None) -> None:
        if self._killed:
            return
        if message:
            self._send(f"Error:{message}")
        self._send(f"Error:{ERR_KILLED}")
        self._killed = True
        self._queue.clear()
        self._planner.clear()
        self._wait_for_heatup = False
        for heater in self._heaters.values():
            heater.target = 0.0

    # -- transmit path --------------------------------------------------------------------

    def _send(self, line: str) -> None:
        if self._closed or self._silent or self._loop is None:
            return
        data = (line + "\n").encode("utf-8")
        bt = self._byte_time()
        if bt == 0.0:
            self._write(data)
            return
        now = self._loop.time()
        self._tx_clock = max(now, self._tx_clock) + len(data) * bt
        self._loop.call_at(self._tx_clock, self._write, data)

    def _write(self, data: bytes) -> None:
        if self._closed or self._pty is None:
            return
        if len(self._txbuf) > 1 << 20:
            return  # nobody reads the port: drop output rather than grow without bound
        self._txbuf.extend(data)
        self._flush()

    def _flush(self) -> None:
        if self._pty is None or self._closed:
            return
        try:
            n = os.write(self._pty.master_fd, self._txbuf)
        except BlockingIOError:
            n = 0
        except OSError:
            return
        del self._txbuf[:n]
        assert self._loop is not None
        if self._txbuf and not self._writer_registered:
            self._writer_registered = True
            self._loop.add_writer(self._pty.master_fd, self._flush)
        elif not self._txbuf and self._writer_registered:
            self._writer_registered = False
            self._loop.remove_writer(self._pty.master_fd)


def _strtol(text: str) -> int:
    match = re.match(r"\s*(-?\d+)", text)
    return int(match.group(1)) if match else 0


class SimMarlinDriver(MarlinDriver):
    """The marlin driver connected to its own simulated printer (started on connect)."""

    name = "sim-marlin"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.sim_options = SimOptions.from_settings(self.settings)
        self.simulator: MarlinSimulator | None = None

    async def connect(self) -> None:
        """Start a simulated printer in its own thread, then connect to its pty."""
        if self.connected:
            return
        await self._stop_simulator()
        sim = MarlinSimulator(SimOptions(**vars(self.sim_options)))
        path = await asyncio.to_thread(sim.start_in_thread)
        self.simulator = sim
        self.settings["port"] = path
        try:
            await super().connect()
        except BaseException:
            await self._stop_simulator()
            raise

    async def close(self) -> None:
        """Close the link and stop the simulated printer."""
        await super().close()
        await self._stop_simulator()

    async def _stop_simulator(self) -> None:
        sim, self.simulator = self.simulator, None
        if sim is not None:
            await asyncio.to_thread(sim.stop_thread)


def _parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m drivers.sim.marlin",
        description="Run a simulated Marlin printer on a pty and print the pty's path.",
    )
    for f in fields(SimOptions):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool",):
            parser.add_argument(flag, type=lambda v: v.lower() in ("1", "true", "yes", "on"))
        elif f.name in ("corrupt_lines", "drop_lines"):
            parser.add_argument(flag, type=lambda v: tuple(int(x) for x in v.split(",") if x))
        elif f.type in ("float",):
            parser.add_argument(flag, type=float)
        elif f.type in ("int", "int | None"):
            parser.add_argument(flag, type=int)
        else:
            parser.add_argument(flag)
    return parser.parse_args(list(argv) if argv is not None else None)


def main(argv: Iterable[str] | None = None) -> None:
    """Run the simulator until interrupted, printing the pty path on stdout."""
    args = _parse_args(argv)
    options = SimOptions.from_settings({k: v for k, v in vars(args).items() if v is not None})
    logging.basicConfig(level=logging.INFO)

    async def run() -> None:
        sim = MarlinSimulator(options)
        path = await sim.open()
        print(path, flush=True)  # the caller reads the path from stdout
        try:
            await asyncio.Event().wait()
        finally:
            await sim.aclose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
