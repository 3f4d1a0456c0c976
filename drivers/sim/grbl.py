"""A GRBL 1.1h simulator on a pty, and the `sim-grbl` driver that runs one.

The simulator answers byte for byte as GRBL 1.1h does: the banner on start and after a soft
reset, a 128-byte receive buffer that loses bytes when overrun, a 15-block planner, `ok` and
`error:N` replies, real-time bytes handled out of band, `<...>` status reports, alarms with
locking, check mode and the `$` system commands. Motion takes time (scaled by `speed_factor`),
and both directions of the link are metered at the emulated baud rate (10 bits a byte), so
streaming strategies can be compared honestly.

Motion is planned as GRBL plans it, by the same planner the analyser uses
(`drivers.planner.MotionQueue`): per-axis rates and accelerations ($110-$122), junction
deviation ($11), arcs within the arc tolerance ($12), look-ahead bounded by the blocks in the
buffer, and the planner emptied where GRBL empties it (spindle and coolant changes, a new S
with the spindle on outside laser mode, dwells). So a job takes the time its estimate says
when the host keeps the buffer full.

Known differences from the firmware: a feed hold stops at once (after `HOLD_DECEL_S`), no
probing input (G38.x always succeeds), no soft limits, and the default `$10=3` so that `Bf:`
appears in status reports (GRBL's default is `$10=1`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from drivers.base import DriverError, MachineOffline
from drivers.grbl import GrblDriver
from drivers.planner import MachineLimits, MotionQueue, QueuedBlock
from drivers.sim.pty import PtyPair

log = logging.getLogger(__name__)

BANNER = b"\r\nGrbl 1.1h ['$' for help]\r\n"
RX_BUFFER_SIZE = 128
BLOCK_BUFFER_SIZE = 15  # usable planner blocks, as `Bf:` and `[OPT:...,15,128]` report
LINE_BUFFER_SIZE = 80  # GRBL keeps at most 79 significant characters of a line
MAX_LINE_NUMBER = 9_999_999
MAX_TOOL_NUMBER = 255
ARC_ANGULAR_TRAVEL_EPSILON = 5e-7
HOLD_DECEL_S = 0.05  # how long Hold:1 lasts before Hold:0 (real machines: 0.05 to 2 s)

RT_STATUS, RT_HOLD, RT_RESUME, RT_RESET = 0x3F, 0x21, 0x7E, 0x18
RT_DOOR, RT_JOG_CANCEL = 0x84, 0x85

# GRBL 1.1h defaults (defaults.h, DEFAULTS_GENERIC) except $10, see the module docstring.
DEFAULT_SETTINGS: dict[int, float] = {
    0: 10, 1: 25, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 10: 3, 11: 0.010, 12: 0.002, 13: 0,
    20: 0, 21: 0, 22: 0, 23: 0, 24: 25.0, 25: 500.0, 26: 250, 27: 1.0, 30: 1000, 31: 0,
    32: 0, 100: 250.0, 101: 250.0, 102: 250.0, 110: 500.0, 111: 500.0, 112: 500.0,
    120: 10.0, 121: 10.0, 122: 10.0, 130: 200.0, 131: 200.0, 132: 200.0,
}  # fmt: skip
# Settings printed as integers by `$$` (the rest get three decimals).
INT_SETTINGS = frozenset({0, 1, 2, 3, 4, 5, 6, 10, 13, 20, 21, 22, 23, 26, 30, 31, 32})

NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
VALUE_LETTERS = frozenset("FIJKLNPRSTXYZ")
AXES = "XYZ"

Vec = tuple[float, float, float]


def _fmt(v: Iterable[float]) -> str:
    return ",".join(f"{x:.3f}" for x in v)


def _add(a: Vec, b: Vec) -> Vec:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def _sub(a: Vec, b: Vec) -> Vec:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


@dataclass(slots=True)
class _Block:
    """One planner block: a straight move at one rate."""

    start: Vec
    target: Vec
    length_mm: float
    rate_mm_min: float
    rapid: bool
    gline: int  # the G-code line counter value of the line that made it
    line_number: int | None
    jog: bool = False
    remaining_mm: float = 0.0
    started: bool = False
    queued: QueuedBlock | None = None
    requested_mm_min: float = 0.0  # the programmed feed; the planner caps it per axis

    def position(self) -> Vec:
        """Return where the tool is now along this block."""
        if self.length_mm <= 0:
            return self.target
        f = 1.0 - max(self.remaining_mm, 0.0) / self.length_mm
        return (
            self.start[0] + (self.target[0] - self.start[0]) * f,
            self.start[1] + (self.target[1] - self.start[1]) * f,
            self.start[2] + (self.target[2] - self.start[2]) * f,
        )


@dataclass(slots=True)
class _Modal:
    """The G-code parser's modal state."""

    motion: float = 0  # 0, 1, 2, 3, 38.2.., 80
    plane: int = 17
    inches: bool = False
    incremental: bool = False
    inverse_time: bool = False
    coord: int = 0  # 0 = G54
    spindle: int = 5  # 3, 4, 5
    coolant_flood: bool = False
    coolant_mist: bool = False
    feed: float = 0.0  # mm/min
    speed: float = 0.0
    tool: int = 0


@dataclass
class Faults:
    """Faults to inject, keyed by G-code line count (1 = the first non-$ line received)."""

    corrupt_lines: set[int] = field(default_factory=set)  # first byte garbled on arrival
    drop_lines: set[int] = field(default_factory=set)  # lost entirely: no reply
    silence_after_line: int | None = None  # stop answering anything after this line
    disconnect_after_line: int | None = None  # close the link after this line
    alarm_at_line: int | None = None  # raise `alarm_code` when this line's motion starts
    alarm_code: int = 1

    @classmethod
    def from_settings(cls, raw: Mapping[str, Any] | None) -> Faults:
        """Build from a settings mapping (as a machine's configuration holds it)."""
        raw = dict(raw or {})
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise DriverError(f"unknown sim-grbl fault settings: {', '.join(sorted(unknown))}")
        for key in ("corrupt_lines", "drop_lines"):
            if key in raw:
                raw[key] = {int(x) for x in raw[key]}
        return cls(**raw)


class _ResetRequested(Exception):
    """Raised inside the protocol task when a line must end without a reply."""


class GrblSimulator:
    """A GRBL 1.1h controller serving the master end of a pty."""

    def __init__(
        self,
        *,
        speed_factor: float = 1.0,
        baud: int = 115200,
        homing: bool = False,
        latency_s: float = 0.0,
        eeprom_busy_s: float = 0.02,
        homing_s: float = 2.0,
        faults: Faults | None = None,
        settings: Mapping[int, float] | None = None,
    ) -> None:
        if speed_factor <= 0:
            raise ValueError("speed_factor must be positive")
        self.speed_factor = float(speed_factor)
        self.byte_rate = baud / 10.0 if baud else 0.0  # 8N1: 10 bits on the wire a byte
        self.latency_s = latency_s
        self.eeprom_busy_s = eeprom_busy_s
        self.homing_s = homing_s
        self.faults = faults or Faults()
        self.settings: dict[int, float] = dict(DEFAULT_SETTINGS)
        if homing:
            self.settings[22] = 1
        self.settings.update(settings or {})

        # -- what tests assert on ------------------------------------------------------
        self.executed: list[str] = []  # G-code lines answered `ok` outside check mode, as sent
        self.checked: list[str] = []  # G-code lines parsed in check mode
        self.replies: list[tuple[str, str]] = []  # (line as sent, ok / error:N)
        self.realtime: list[int] = []  # real-time bytes received, in order
        self.alarms: list[int] = []
        self.resets = 0
        self.max_in_flight = 0  # most bytes of unanswered lines ever seen at once
        self.rx_overflow_bytes = 0
        self.eeprom_violations: list[str] = []  # EEPROM writes that had company
        self.eeprom_dropped_bytes = 0
        self.dropped_lines: list[str] = []
        self.bytes_in = 0
        self.bytes_out = 0
        self.disconnected = False

        # -- machine state -------------------------------------------------------------
        self.state = "Alarm" if self.settings[22] else "Idle"
        self.mpos: Vec = (0.0, 0.0, 0.0)  # parser (planned) position, machine coordinates
        self.coord_systems: list[Vec] = [(0.0, 0.0, 0.0)] * 6
        self.g28: Vec = (0.0, 0.0, 0.0)
        self.g30: Vec = (0.0, 0.0, 0.0)
        self.g92: Vec = (0.0, 0.0, 0.0)
        self.modal = _Modal()
        self.startup_lines = ["", ""]
        self.build_info = ""
        self.feed_ov = 100
        self.rapid_ov = 100
        self.spindle_ov = 100
        self._exec_pos: Vec = (0.0, 0.0, 0.0)  # where the executor has put the tool
        self._planner: deque[_Block] = deque()
        self._motion = MotionQueue(self.motion_limits(), capacity=BLOCK_BUFFER_SIZE)
        self._hold = False
        self._critical = False
        self._gline = 0
        self._silent = False
        self._wco_counter = 0
        self._ovr_counter = 0
        self._status_pending = False
        self._eeprom_busy_until = 0.0
        self._host_bytes = 0  # non-real-time bytes received (kept or lost)
        self._answered_bytes = 0  # bytes of lines answered (or flushed by a reset)

        # -- I/O -------------------------------------------------------------------------
        self._rx_buf = bytearray()
        self._rx_chunks: deque[tuple[float, bytes]] = deque()
        self._rx_wire_t = 0.0
        self._tx_chunks: deque[tuple[float, bytes]] = deque()
        self._tx_wire_t = 0.0
        self._pty: PtyPair | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._changed = asyncio.Event()
        self._rx_ready = asyncio.Event()
        self._tx_ready = asyncio.Event()
        self._protocol_task: asyncio.Task[None] | None = None
        self._executor_task: asyncio.Task[None] | None = None
        self._pump_tasks: list[asyncio.Task[None]] = []
        self.path = ""

    # ---------------------------------------------------------------------------------
    # Lifecycle

    def start(self, timeout: float = 5.0) -> str:
        """Serve in a background thread with its own event loop; return the pty path."""
        self._thread = threading.Thread(target=self._thread_main, name="sim-grbl", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the GRBL simulator did not start")
        return self.path

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the pty; safe to call twice."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _thread_main(self) -> None:
        asyncio.run(self.serve())

    async def serve(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve on the running loop until stop() (or the task is cancelled)."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        self._rx_ready = asyncio.Event()
        self._tx_ready = asyncio.Event()
        self._pty = PtyPair()
        self.path = self._pty.path
        self._loop.add_reader(self._pty.master_fd, self._on_readable)
        self._pump_tasks = [
            asyncio.create_task(self._rx_pump()),
            asyncio.create_task(self._tx_pump()),
        ]
        self._start_machine_tasks()
        # No banner yet: GRBL printed it at power-up, before any host had the port open.
        # A host sees it after a soft reset, or after power_cycle() (a DTR reset on open).
        self._ready.set()
        if on_ready is not None:
            on_ready(self.path)
        try:
            await self._stop.wait()
        finally:
            self._stop_machine_tasks()
            for t in self._pump_tasks:
                t.cancel()
            self._close_pty()

    def _close_pty(self) -> None:
        if self._pty is not None and self._pty.master_fd >= 0 and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._pty.master_fd)
            self._pty.close()

    def _start_machine_tasks(self) -> None:
        self._protocol_task = asyncio.create_task(self._protocol_loop())
        self._executor_task = asyncio.create_task(self._executor())

    def _stop_machine_tasks(self) -> None:
        for t in (self._protocol_task, self._executor_task):
            if t is not None and t is not asyncio.current_task():
                t.cancel()

    def _call(self, fn: Callable[[], None]) -> None:
        if self._loop is None:
            raise RuntimeError("the simulator is not running")
        self._loop.call_soon_threadsafe(fn)

    def power_cycle(self) -> None:
        """Power-cycle the controller, as the DTR line resets an Arduino when a port opens."""
        self._call(self._do_power_cycle)

    def inject_alarm(self, code: int) -> None:
        """Raise ALARM:code now (1 and 2 are critical: only a reset gets out)."""
        self._call(lambda: self._alarm(code))

    # ---------------------------------------------------------------------------------
    # The wire: bytes in both directions are metered at the byte rate.

    def _on_readable(self) -> None:
        assert self._pty is not None
        try:
            data = os.read(self._pty.master_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            # EIO: no process holds the slave open at the moment; nothing to read.
            return
        if not data:
            return
        self._rx_chunks.append((time.monotonic() + self.latency_s, data))
        self._rx_ready.set()

    async def _rx_pump(self) -> None:
        while True:
            if not self._rx_chunks:
                self._rx_ready.clear()
                await self._rx_ready.wait()
                continue
            t_avail, data = self._rx_chunks[0]
            now = time.monotonic()
            if now < t_avail:
                await asyncio.sleep(t_avail - now)
                continue
            if self.byte_rate:
                start = max(self._rx_wire_t, t_avail)
                n = min(int((now - start) * self.byte_rate), len(data))
                if n <= 0:
                    await asyncio.sleep(max(start + 1 / self.byte_rate - now, 0.0005))
                    continue
                self._rx_wire_t = start + n / self.byte_rate
            else:
                n = len(data)
            if n == len(data):
                self._rx_chunks.popleft()
            else:
                self._rx_chunks[0] = (t_avail, data[n:])
            self._isr(data[:n])
            if self._rx_chunks:
                await asyncio.sleep(0.001)

    async def _tx_pump(self) -> None:
        while True:
            if not self._tx_chunks:
                self._tx_ready.clear()
                await self._tx_ready.wait()
                continue
            t_avail, data = self._tx_chunks[0]
            now = time.monotonic()
            if now < t_avail:
                await asyncio.sleep(t_avail - now)
                continue
            if self.byte_rate:
                start = max(self._tx_wire_t, t_avail)
                n = min(int((now - start) * self.byte_rate), len(data))
                if n <= 0:
                    await asyncio.sleep(max(start + 1 / self.byte_rate - now, 0.0005))
                    continue
            else:
                start, n = now, len(data)
            if self._pty is None or self._pty.master_fd < 0:
                self._tx_chunks.clear()
                continue
            try:
                n = os.write(self._pty.master_fd, data[:n])
            except BlockingIOError:
                await asyncio.sleep(0.005)  # the driver is not reading; the pty is full
                continue
            except OSError:
                self._tx_chunks.clear()
                continue
            self.bytes_out += n
            if self.byte_rate:
                self._tx_wire_t = start + n / self.byte_rate
            if n == len(data):
                self._tx_chunks.popleft()
            else:
                self._tx_chunks[0] = (t_avail, data[n:])
                await asyncio.sleep(0.001)

    def _out(self, text: str) -> None:
        if self._silent:
            return
        self._out_raw((text + "\r\n").encode("latin-1"))

    def _out_raw(self, data: bytes) -> None:
        if self._silent:
            return
        self._tx_chunks.append((time.monotonic() + self.latency_s, data))
        self._tx_ready.set()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    # ---------------------------------------------------------------------------------
    # The serial interrupt: real-time bytes act at once, the rest go to the RX buffer.

    def _isr(self, data: bytes) -> None:
        now = time.monotonic()
        self.bytes_in += len(data)
        line_end = False
        for b in data:
            if self._silent:
                continue
            if now < self._eeprom_busy_until:
                # Writing EEPROM stalls the AVR: bytes arriving meanwhile are lost.
                self.eeprom_dropped_bytes += 1
                if b not in (RT_STATUS, RT_HOLD, RT_RESUME, RT_RESET) and b < 0x80:
                    self._host_bytes += 1
                continue
            if b in (RT_STATUS, RT_HOLD, RT_RESUME, RT_RESET) or b >= 0x80:
                self.realtime.append(b)
                self._realtime(b)
                continue
            self._host_bytes += 1
            if len(self._rx_buf) >= RX_BUFFER_SIZE:
                self.rx_overflow_bytes += 1
                continue
            self._rx_buf.append(b)
            if b in (10, 13):
                line_end = True
        self.max_in_flight = max(self.max_in_flight, self._host_bytes - self._answered_bytes)
        if line_end:
            self._notify()

    def _realtime(self, b: int) -> None:
        if b == RT_RESET:
            asyncio.get_running_loop().call_soon(self._soft_reset)
        elif b == RT_STATUS:
            if self._critical or self.state == "Home" or self._status_pending:
                return  # GRBL ignores `?` in these states (and merges repeated ones)
            self._status_pending = True
            asyncio.get_running_loop().call_soon(self._send_status)
        elif b == RT_HOLD:
            self._feed_hold()
        elif b == RT_RESUME:
            self._cycle_start()
        elif b == RT_JOG_CANCEL:
            if self.state == "Jog":
                self._clear_planner()
                self._hold = False
                self.state = "Idle"
                self._notify()
        elif b == RT_DOOR:
            if self.state in ("Idle", "Run", "Hold:0", "Hold:1", "Jog"):
                self._hold = True
                self.state = "Door:0"
                self._out("[MSG:Check Door]")
                self._notify()
        elif 0x90 <= b <= 0x94:
            step = {0x90: None, 0x91: 10, 0x92: -10, 0x93: 1, 0x94: -1}[b]
            new = 100 if step is None else min(max(self.feed_ov + step, 10), 200)
            if new != self.feed_ov:
                self.feed_ov = new
                self._ovr_counter = 0
                self._notify()
        elif 0x95 <= b <= 0x97:
            new = {0x95: 100, 0x96: 50, 0x97: 25}[b]
            if new != self.rapid_ov:
                self.rapid_ov = new
                self._ovr_counter = 0
                self._notify()
        elif 0x99 <= b <= 0x9D:
            step = {0x99: None, 0x9A: 10, 0x9B: -10, 0x9C: 1, 0x9D: -1}[b]
            new = 100 if step is None else min(max(self.spindle_ov + step, 10), 200)
            if new != self.spindle_ov:
                self.spindle_ov = new
                self._ovr_counter = 0
        # Other extended bytes (0x9E, 0xA0, 0xA1, unknown) are dropped, as GRBL drops them.

    def motion_limits(self) -> MachineLimits:
        """Return the limits the settings give the planner, as `$$` would report them."""
        st = self.settings
        return MachineLimits(
            max_acceleration=(st[120], st[121], st[122], 10000.0),
            max_feedrate=(st[110] / 60, st[111] / 60, st[112] / 60, 120.0),
            print_acceleration=1.0e6,
            retract_acceleration=1.0e6,
            travel_acceleration=1.0e6,
            junction_deviation=st[11],
            block_buffer_size=BLOCK_BUFFER_SIZE + 1,
            firmware="grbl",
            arc_tolerance=st[12],
            laser_mode=bool(st[32]),
            spindle_min=st[31],
            spindle_max=st[30],
        )

    def _clear_planner(self) -> None:
        self._planner.clear()
        self._motion.clear()

    def _feed_hold(self) -> None:
        if self.state in ("Idle",):
            self._hold = True
            self.state = "Hold:0"
        elif self.state in ("Run", "Jog"):
            self._hold = True  # the executor decelerates: Hold:1, then Hold:0
        self._notify()

    def _cycle_start(self) -> None:
        if self.state in ("Hold:0", "Door:0"):
            self._hold = False
            self.state = "Run" if self._planner else "Idle"
            self._notify()

    # ---------------------------------------------------------------------------------
    # Resets and alarms

    def _boot_messages(self) -> None:
        self._out_raw(BANNER)
        if self.state == "Alarm":
            self._out("[MSG:'$H'|'$X' to unlock]")

    def _reinit(self) -> None:
        self._stop_machine_tasks()
        self._rx_buf.clear()
        self._clear_planner()
        self._hold = False
        self._critical = False
        self._status_pending = False
        self._eeprom_busy_until = 0.0
        self._answered_bytes = self._host_bytes  # the RX buffer is flushed
        self.g92 = (0.0, 0.0, 0.0)
        self.modal = _Modal()
        self._exec_pos = self.mpos = self._current_mpos()
        self.feed_ov = self.rapid_ov = self.spindle_ov = 100
        self._wco_counter = 0
        self._ovr_counter = 0
        self.resets += 1
        if self.state in ("Alarm", "Sleep"):
            self.state = "Alarm"
        else:
            self.state = "Idle"
        self._start_machine_tasks()
        self._boot_messages()
        self._notify()

    def _soft_reset(self) -> None:
        if self.disconnected:
            return
        moving = self.state in ("Run", "Jog", "Home", "Hold:1") or self.state in (
            "Door:2",
            "Door:3",
        )
        if moving and not self._critical:
            code = 6 if self.state == "Home" else 3
            self.state = "Alarm"
            self.alarms.append(code)
            self._out(f"ALARM:{code}")
        self._reinit()

    def _do_power_cycle(self) -> None:
        self.state = "Alarm" if self.settings[22] else "Idle"
        self._exec_pos = self.mpos = (0.0, 0.0, 0.0)
        self._clear_planner()
        self._reinit()

    def _alarm(self, code: int) -> None:
        self.alarms.append(code)
        self._exec_pos = self.mpos = self._current_mpos()
        self._clear_planner()
        self._hold = False
        self.state = "Alarm"
        self._out(f"ALARM:{code}")
        if code in (1, 2):
            # Critical: GRBL blocks everything but a reset, leaving the RX buffer unread.
            self._out("[MSG:Reset to continue]")
            self._critical = True
        if self._protocol_task is not None and self._protocol_task is not asyncio.current_task():
            self._protocol_task.cancel()
            self._protocol_task = None
            if not self._critical:
                self._protocol_task = asyncio.create_task(self._protocol_loop())
        self._notify()

    # ---------------------------------------------------------------------------------
    # Status reports

    def _current_mpos(self) -> Vec:
        if self._planner and self._planner[0].started:
            return self._planner[0].position()
        return self._exec_pos

    def _wco(self) -> Vec:
        return _add(self.coord_systems[self.modal.coord], self.g92)

    def _send_status(self) -> None:
        self._status_pending = False
        if self._silent or self._critical:
            return
        self._out(self.status_report())

    def status_report(self) -> str:
        """Return the `<...>` report GRBL would send now."""
        mask = int(self.settings[10])
        mpos = self._current_mpos()
        wco = self._wco()
        parts = [self.state]
        if mask & 1:
            parts.append("MPos:" + _fmt(mpos))
        else:
            parts.append("WPos:" + _fmt(_sub(mpos, wco)))
        if mask & 2:
            parts.append(f"Bf:{BLOCK_BUFFER_SIZE - len(self._planner)},"
                         f"{RX_BUFFER_SIZE - len(self._rx_buf)}")  # fmt: skip
        block = self._planner[0] if self._planner and self._planner[0].started else None
        if block is not None and block.line_number:
            parts.append(f"Ln:{block.line_number}")
        moving = block is not None and self.state in ("Run", "Jog", "Hold:1")
        feed = 0.0
        if moving and block is not None:
            ov = self.rapid_ov if block.rapid else self.feed_ov
            feed = block.rate_mm_min * ov / 100
        speed = self.modal.speed * self.spindle_ov / 100 if self.modal.spindle != 5 else 0.0
        parts.append(f"FS:{feed:.0f},{speed:.0f}")
        busy = self.state not in ("Idle", "Alarm", "Check", "Sleep")
        if self._wco_counter > 0:
            self._wco_counter -= 1
        else:
            self._wco_counter = 29 if busy else 9
            if self._ovr_counter == 0:
                self._ovr_counter = 1  # GRBL puts Ov in the report after a WCO one
            parts.append("WCO:" + _fmt(wco))
        if self._ovr_counter > 0:
            self._ovr_counter -= 1
        else:
            self._ovr_counter = 19 if busy else 9
            parts.append(f"Ov:{self.feed_ov},{self.rapid_ov},{self.spindle_ov}")
            acc = ""
            if self.modal.spindle == 3:
                acc += "S"
            elif self.modal.spindle == 4:
                acc += "C"
            if self.modal.coolant_flood:
                acc += "F"
            if self.modal.coolant_mist:
                acc += "M"
            if acc:
                parts.append("A:" + acc)
        return "<" + "|".join(parts) + ">"

    # ---------------------------------------------------------------------------------
    # The executor: runs planner blocks in time, honours feed hold.

    async def _executor(self) -> None:
        motion_t = time.monotonic()
        while True:
            if not self._planner or self._hold:
                if not self._planner and self.state in ("Run", "Jog"):
                    self.state = "Idle"
                    self._notify()
                if self._hold and self.state in ("Run", "Jog"):
                    self.state = "Hold:1"  # decelerating: a reset now raises ALARM:3
                    self._motion.stop_now()
                    self._notify()
                    await asyncio.sleep(HOLD_DECEL_S / max(1.0, self.speed_factor / 10))
                    if self.state == "Hold:1":
                        self.state = "Hold:0"
                        self._notify()
                    continue
                await self._changed.wait()
                motion_t = time.monotonic()
                continue
            block = self._planner[0]
            if self.state not in ("Alarm", "Check"):
                self.state = "Jog" if block.jog else "Run"
            if not block.started:
                block.started = True
                if self.faults.alarm_at_line is not None and block.gline == (
                    self.faults.alarm_at_line
                ):
                    self.faults.alarm_at_line = None
                    self._alarm(self.faults.alarm_code)
                    continue
            ov = self.rapid_ov if block.rapid else self.feed_ov
            now = time.monotonic()
            motion = self._motion
            # Machine time runs speed_factor times faster than the wall clock.
            done = motion.advance((now - motion_t) * self.speed_factor, ov / 100, max_blocks=1)
            if done:
                # Carry the overshoot into the next block so that sleeps that run long do
                # not slow the machine down on many short segments.
                motion_t = now - motion.leftover / self.speed_factor
                self._planner.popleft()
                block.remaining_mm = 0.0
                self._exec_pos = block.target
                self._notify()
                continue
            motion_t = now
            if block.queued is not None:
                block.remaining_mm = block.queued.remaining
            wait = motion.time_to_next(ov / 100) / self.speed_factor
            ev = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait, 0.05)):
                    await ev.wait()

    async def _plan(self, block: _Block) -> None:
        if block.length_mm <= 1e-9:
            return  # GRBL drops zero-length blocks
        block.remaining_mm = block.length_mm
        await self._wait_for(lambda: len(self._planner) < BLOCK_BUFFER_SIZE)
        delta = (*_sub(block.target, block.start), 0.0)
        queued = self._motion.make_block(
            delta, 1.0e9 if block.rapid else block.requested_mm_min / 60, tag=block
        )
        if queued is None:
            return
        block.queued = queued
        self._motion.push(queued, delta)
        self._planner.append(block)
        if self.state == "Idle" and not self._hold:
            self.state = "Jog" if block.jog else "Run"
        self._notify()

    async def _sync(self) -> None:
        """Wait until all motion is done (protocol_buffer_synchronize)."""
        if self.state == "Check":
            return
        await self._wait_for(lambda: not self._planner)

    # ---------------------------------------------------------------------------------
    # The protocol loop: one line at a time from the RX buffer.

    async def _protocol_loop(self) -> None:
        while not self.disconnected:
            await self._wait_for(lambda: b"\n" in self._rx_buf or b"\r" in self._rx_buf)
            ends = [i for i in (self._rx_buf.find(b"\n"), self._rx_buf.find(b"\r")) if i >= 0]
            idx = min(ends)
            raw = bytes(self._rx_buf[: idx + 1])
            del self._rx_buf[: idx + 1]
            self._notify()
            await self._execute_line(raw)

    def _reply(self, raw: bytes, text: str, sent: str) -> None:
        self._answered_bytes += len(raw)
        self.replies.append((sent, text))
        self._out(text)

    async def _execute_line(self, raw: bytes) -> None:
        sent = raw[:-1].decode("latin-1")
        line, overflow = self._preprocess(sent)
        gl = 0
        if line and not line.startswith("$"):
            self._gline += 1
            gl = self._gline
            if gl in self.faults.drop_lines:
                self._answered_bytes += len(raw)
                self.dropped_lines.append(sent)
                return
            if gl in self.faults.corrupt_lines:
                line = "#" + line[1:]
        if overflow:
            code: int | None = 11
        elif not line:
            code = None
        elif line.startswith("$"):
            code = await self._system_command(line)
        elif self.state in ("Alarm", "Jog"):
            code = 9
        else:
            code = await self._gcode(line, gl)
        self._reply(raw, "ok" if code is None else f"error:{code}", sent)
        if code is None and line and not line.startswith("$"):
            (self.checked if self.state == "Check" else self.executed).append(sent)
        if gl and gl == self.faults.silence_after_line:
            self._silent = True
        if gl and gl == self.faults.disconnect_after_line:
            # Let the reply reach the wire first, then pull the plug.
            await asyncio.sleep(0.05)
            self.disconnected = True
            self._silent = True
            self._close_pty()

    @staticmethod
    def _preprocess(text: str) -> tuple[str, bool]:
        """Strip spaces and comments and uppercase, as GRBL's protocol loop does."""
        out: list[str] = []
        in_paren = False
        overflow = False
        for c in text:
            if in_paren:
                if c == ")":
                    in_paren = False
                continue
            if c <= " ":
                continue
            if c == "(":
                in_paren = True
            elif c == ";":
                break
            elif c in "/%":
                continue  # block delete and program start/end are not supported: ignored
            elif len(out) >= LINE_BUFFER_SIZE - 1:
                overflow = True
            else:
                out.append(c.upper())
        return "".join(out), overflow

    # ---------------------------------------------------------------------------------
    # `$` system commands

    async def _eeprom_write(self) -> None:
        # An EEPROM write needs the line to be alone: anything else in the RX buffer, or
        # arriving while the AVR is busy writing, is at risk.
        if self._rx_buf:
            self.eeprom_violations.append(self._rx_buf.decode("latin-1"))
        self._eeprom_busy_until = time.monotonic() + self.eeprom_busy_s
        await asyncio.sleep(self.eeprom_busy_s)

    async def _system_command(self, line: str) -> int | None:
        idle_or_alarm = self.state in ("Idle", "Alarm")
        if line == "$":
            self._out("[HLP:$$ $# $G $I $N $x=val $Nx=line $J=line $SLP $C $X $H ~ ! ? ctrl-x]")
            return None
        c = line[1]
        if c == "J":
            if self.state not in ("Idle", "Jog"):
                return 8
            if line[2:3] != "=":
                return 3
            return await self._gcode(line[3:], 0, jog=True)
        if c in "$GCX":
            if len(line) != 2:
                return 3
            if c == "$":
                if self.state in ("Run", "Jog", "Hold:0", "Hold:1", "Home"):
                    return 8
                for k, v in self.settings.items():
                    self._out(f"${k}={int(v)}" if k in INT_SETTINGS else f"${k}={v:.3f}")
            elif c == "G":
                self._out(self._gc_state())
            elif c == "C":
                if self.state == "Check":
                    self._out("[MSG:Disabled]")
                    # GRBL resets right after the `ok` to restore the parser state.
                    asyncio.get_running_loop().call_soon(self._reinit)
                else:
                    if self.state != "Idle":
                        return 8
                    self.state = "Check"
                    self._out("[MSG:Enabled]")
            elif c == "X" and self.state == "Alarm":
                self._out("[MSG:Caution: Unlocked]")
                self.state = "Idle"
                self._notify()
            return None
        if not idle_or_alarm:
            return 8
        if c == "#":
            if len(line) != 2:
                return 3
            for i, name in enumerate(("G54", "G55", "G56", "G57", "G58", "G59")):
                self._out(f"[{name}:{_fmt(self.coord_systems[i])}]")
            self._out(f"[G28:{_fmt(self.g28)}]")
            self._out(f"[G30:{_fmt(self.g30)}]")
            self._out(f"[G92:{_fmt(self.g92)}]")
            self._out("[TLO:0.000]")
            self._out("[PRB:0.000,0.000,0.000:0]")
            return None
        if c == "H":
            if not self.settings[22]:
                return 5
            self.state = "Home"
            self._notify()
            await asyncio.sleep(self.homing_s / self.speed_factor)
            pull = -self.settings[27]
            self._exec_pos = self.mpos = (pull, pull, pull)
            self.state = "Idle"
            self._notify()
            return None
        if c == "S":
            if line != "$SLP":
                return 3
            self.state = "Sleep"
            self._out("[MSG:Sleeping]")
            return None
        if c == "I":
            if len(line) == 2:
                self._out(f"[VER:1.1h.20190825:{self.build_info}]")
                self._out("[OPT:VN,15,128]")
                return None
            if line[2] != "=":
                return 3
            self.build_info = line[3:]
            await self._eeprom_write()
            return None
        if c == "R":
            if not line.startswith("$RST=") or len(line) != 6 or line[5] not in "$#*":
                return 3
            if line[5] in "$*":
                self.settings = dict(DEFAULT_SETTINGS)
            if line[5] in "#*":
                self.coord_systems = [(0.0, 0.0, 0.0)] * 6
                self.g28 = self.g30 = (0.0, 0.0, 0.0)
            await self._eeprom_write()
            self._out("[MSG:Restoring defaults]")
            asyncio.get_running_loop().call_soon(self._reinit)
            return None
        if c == "N":
            if len(line) == 2:
                for i, s in enumerate(self.startup_lines):
                    self._out(f"$N{i}={s}")
                return None
            if self.state != "Idle":
                return 8
            m = re.fullmatch(r"\$N(\d+)=(.*)", line)
            if not m:
                return 3
            n = int(m.group(1))
            if n >= len(self.startup_lines):
                return 3
            self.startup_lines[n] = m.group(2)
            await self._eeprom_write()
            return None
        m = re.fullmatch(r"\$([-+]?[0-9.]*)(=?)(.*)", line)
        if not m or not NUMBER_RE.fullmatch(m.group(1) or "x"):
            return 3
        if not m.group(2):
            return 3
        param = float(m.group(1))
        if not NUMBER_RE.fullmatch(m.group(3)):
            return 2
        value = float(m.group(3))
        if param != int(param) or int(param) not in DEFAULT_SETTINGS:
            return 3
        key = int(param)
        if value < 0:
            return 4
        if key == 0 and value < 3:
            return 6
        if key == 20 and value and not self.settings[22]:
            return 10
        self.settings[key] = value
        self._motion.set_limits(self.motion_limits())
        await self._eeprom_write()
        return None

    def _gc_state(self) -> str:
        m = self.modal
        motion = {0: "G0", 1: "G1", 2: "G2", 3: "G3", 80: "G80"}.get(int(m.motion), "G38.2")
        if m.motion not in (0, 1, 2, 3, 80):
            motion = f"G{m.motion:g}"
        words = [
            motion,
            f"G{54 + m.coord}",
            f"G{m.plane}",
            "G20" if m.inches else "G21",
            "G91" if m.incremental else "G90",
            "G93" if m.inverse_time else "G94",
            f"M{m.spindle}",
        ]
        if m.coolant_mist:
            words.append("M7")
        if m.coolant_flood:
            words.append("M8")
        if not (m.coolant_mist or m.coolant_flood):
            words.append("M9")
        feed = m.feed / 25.4 if m.inches else m.feed
        words += [f"T{m.tool}", f"F{feed:g}", f"S{m.speed:g}"]
        return "[GC:" + " ".join(words) + "]"

    # ---------------------------------------------------------------------------------
    # G-code: GRBL's gc_execute_line, enough of it to answer as GRBL does.

    async def _gcode(self, line: str, gline: int, *, jog: bool = False) -> int | None:
        words: list[tuple[str, float]] = []
        i = 0
        while i < len(line):
            letter = line[i]
            if not "A" <= letter <= "Z":
                return 1
            m = NUMBER_RE.match(line, i + 1)
            if not m:
                return 2
            words.append((letter, float(m.group())))
            i = m.end()

        g_groups: dict[int, float] = {}  # modal group -> G value
        m_groups: dict[int, int] = {}
        values: dict[str, float] = {}
        axis_command: str | None = None  # "motion" or "nonmodal"
        nonmodal: float | None = None
        for letter, value in words:
            if letter == "G":
                iv = int(value)
                mant = round(100 * (value - iv))
                group: int
                if iv in (10, 28, 30, 92):
                    if mant == 0:
                        if axis_command:
                            return 24
                        axis_command = "nonmodal"
                    elif mant == 10 and iv != 10:
                        mant = 0
                    group = 0
                elif iv in (4, 53):
                    group = 0
                elif iv in (0, 1, 2, 3, 38):
                    if iv == 38:
                        if mant not in (20, 30, 40, 50):
                            return 20
                        mant = 0
                    if axis_command:
                        return 24
                    axis_command = "motion"
                    group = 1
                elif iv == 80:
                    group = 1
                elif iv in (17, 18, 19):
                    group = 2
                elif iv in (90, 91):
                    if mant == 0:
                        group = 3
                    else:
                        if mant != 10 or iv == 90:
                            return 20
                        mant = 0
                        group = 4
                elif iv in (93, 94):
                    group = 5
                elif iv in (20, 21):
                    group = 6
                elif iv == 40:
                    group = 7
                elif iv in (43, 49):
                    if iv == 43 and mant != 10:
                        return 20
                    mant = 0
                    group = 8
                elif 54 <= iv <= 59:
                    if mant:
                        return 29
                    group = 12
                elif iv == 61:
                    if mant:
                        return 20
                    group = 13
                else:
                    return 20
                if mant:
                    return 23
                if group in g_groups:
                    return 21
                g_groups[group] = value
                if group == 0:
                    nonmodal = value
            elif letter == "M":
                if value != int(value):
                    return 23
                mv = int(value)
                if mv in (0, 1, 2, 30):
                    mgroup = 4
                elif mv in (3, 4, 5):
                    mgroup = 7
                elif mv in (8, 9):
                    mgroup = 8
                else:
                    return 20  # M7 and M56 are compile-time options, off by default
                if mgroup in m_groups:
                    return 21
                m_groups[mgroup] = mv
            elif letter in VALUE_LETTERS:
                if letter in values:
                    return 25
                if letter in "FNPST" and value < 0:
                    return 4
                if letter == "T" and value > MAX_TOOL_NUMBER:
                    return 38
                values[letter] = value
            else:
                return 20

        if jog:
            if set(g_groups) - {0, 3, 6} or m_groups or (nonmodal not in (None, 53.0)):
                return 16
            if "F" not in values:
                return 22
            if set(values) - set("XYZFN"):
                return 16
            if not any(a in values for a in AXES):
                return 26

        st = self.modal
        scale = 25.4 if (g_groups.get(6, 20.0 if st.inches else 21.0) == 20) else 1.0
        axis_words = {a: values[a] * scale for a in AXES if a in values}
        used = {"N", "F", "S", "T"}
        if "N" in values and values["N"] > MAX_LINE_NUMBER:
            return 27
        motion = g_groups.get(1, st.motion) if not jog else 1.0
        inverse_time = g_groups.get(5, 93 if st.inverse_time else 94) == 93
        if axis_words and not axis_command:
            axis_command = "motion"
        if axis_command == "motion" and motion == 80:
            return 31
        feed = st.feed
        if "F" in values:
            feed = values["F"] * scale
        elif inverse_time and axis_command == "motion" and motion in (1, 2, 3):
            return 22
        if not jog and axis_command == "motion" and motion in (1, 2, 3) and feed <= 0:
            return 22
        if nonmodal == 4:
            if "P" not in values:
                return 28
            used.add("P")
        if nonmodal == 10:
            if "P" not in values or "L" not in values:
                return 28
            if values["L"] not in (2, 20):
                return 20
            if values["P"] != int(values["P"]) or values["P"] > 6:
                return 29
            if not axis_words:
                return 26
            used |= {"P", "L"} | set(axis_words)
        if nonmodal == 92 and not axis_words:
            return 26
        if nonmodal == 53 and motion not in (0, 1):
            return 30

        coord = st.coord if 12 not in g_groups else int(g_groups[12]) - 54
        wco = _add(self.coord_systems[coord], self.g92)
        incremental = g_groups.get(3, 91 if st.incremental else 90) == 91
        current = self.mpos

        def target_of(words_: Mapping[str, float], absolute_machine: bool = False) -> Vec:
            out = list(current)
            for k, a in enumerate(AXES):
                if a in words_:
                    if absolute_machine:
                        out[k] = words_[a]
                    elif incremental:
                        out[k] = current[k] + words_[a]
                    else:
                        out[k] = words_[a] + wco[k]
            return (out[0], out[1], out[2])

        arc_center: Vec | None = None
        if axis_command == "motion" and motion in (2, 3):
            plane = int(g_groups.get(2, st.plane))
            a0, a1 = {17: (0, 1), 18: (2, 0), 19: (1, 2)}[plane]
            target = target_of(axis_words, nonmodal == 53)
            if not any(AXES[a] in axis_words for a in (a0, a1)):
                return 32
            x = target[a0] - current[a0]
            y = target[a1] - current[a1]
            if "R" in values:
                used.add("R")
                r = values["R"] * scale
                if abs(x) < 1e-9 and abs(y) < 1e-9:
                    return 33
                h2 = 4.0 * r * r - x * x - y * y
                if h2 < 0:
                    return 34
                h = -math.sqrt(h2) / math.hypot(x, y)
                if motion == 3:
                    h = -h
                if r < 0:
                    h = -h
                off0 = 0.5 * (x - y * h)
                off1 = 0.5 * (y + x * h)
            else:
                ijk = {"I": 0, "J": 1, "K": 2}
                names = {v: k for k, v in ijk.items()}
                if names[a0] not in values and names[a1] not in values:
                    return 35
                used |= {n for n in "IJK" if n in values}
                off0 = values.get(names[a0], 0.0) * scale
                off1 = values.get(names[a1], 0.0) * scale
                tr = math.hypot(x - off0, y - off1)
                r0 = math.hypot(off0, off1)
                dr = abs(tr - r0)
                if dr > 0.005 and (dr > 0.5 or dr > 0.001 * r0):
                    return 33
            c = list(current)
            c[a0] += off0
            c[a1] += off1
            arc_center = (c[0], c[1], c[2])
        if axis_command == "motion":
            used |= set(axis_words)
        if nonmodal in (28, 30, 92):
            used |= set(axis_words)
        unused = set(values) - used
        if unused:
            return 31 if unused <= set(AXES) else 36

        # -- execute, in GRBL's order ------------------------------------------------
        check = self.state == "Check"
        laser = bool(self.settings[32])
        line_number = int(values["N"]) if "N" in values else None
        if jog:
            target = target_of(axis_words, nonmodal == 53)
            await self._plan(self._line_block(target, feed, False, gline, line_number, jog=True))
            self.mpos = target
            return None
        if 5 in g_groups:
            st.inverse_time = inverse_time
        if "F" in values and not inverse_time:
            st.feed = feed
        if "S" in values and values["S"] != st.speed:
            # A new speed with the spindle on waits for the planner (spindle_sync), except in
            # laser mode on a line with motion: the power then travels with the block.
            laser_motion = laser and bool(axis_words) and axis_command == "motion"
            if st.spindle != 5 and not laser_motion and not check:
                await self._sync()
            st.speed = values["S"]
        if "T" in values:
            st.tool = int(values["T"])
        if 7 in m_groups and m_groups[7] != st.spindle:
            # Every spindle state change is synced, even in laser mode.
            if not check:
                await self._sync()
            st.spindle = m_groups[7]
            self._ovr_counter = 0
        if 8 in m_groups:
            await self._sync()
            st.coolant_flood = m_groups[8] == 8
            st.coolant_mist = False if m_groups[8] == 9 else st.coolant_mist
        if nonmodal == 4 and not check:
            await self._sync()
            await asyncio.sleep(values["P"] / self.speed_factor)
        if 2 in g_groups:
            st.plane = int(g_groups[2])
        if 6 in g_groups:
            st.inches = g_groups[6] == 20
        if 12 in g_groups:
            st.coord = coord
            self._wco_counter = 0
        if 3 in g_groups:
            st.incremental = incremental
        if nonmodal == 10:
            p = int(values["P"]) - 1 if values["P"] else st.coord
            data = list(self.coord_systems[p])
            for k, a in enumerate(AXES):
                if a in axis_words:
                    if values["L"] == 20:
                        data[k] = current[k] - self.g92[k] - axis_words[a]
                    else:
                        data[k] = axis_words[a]
            if not check:
                await self._sync()
                await self._eeprom_write()
            self.coord_systems[p] = (data[0], data[1], data[2])
            self._wco_counter = 0
        elif nonmodal in (28, 30):
            stored = self.g28 if nonmodal == 28 else self.g30
            if axis_words:
                mid = target_of(axis_words)
                await self._move(mid, 0, feed, gline, line_number, check)
            dest = list(self.mpos)
            for k, a in enumerate(AXES):
                if not axis_words or a in axis_words:
                    dest[k] = stored[k]
            await self._move((dest[0], dest[1], dest[2]), 0, feed, gline, line_number, check)
        elif nonmodal in (28.1, 30.1):
            if not check:
                await self._sync()
                await self._eeprom_write()
            if nonmodal == 28.1:
                self.g28 = self.mpos
            else:
                self.g30 = self.mpos
        elif nonmodal == 92:
            data = list(self.g92)
            for k, a in enumerate(AXES):
                if a in axis_words:
                    data[k] = current[k] - self.coord_systems[coord][k] - axis_words[a]
            self.g92 = (data[0], data[1], data[2])
            self._wco_counter = 0
        elif nonmodal == 92.1:
            self.g92 = (0.0, 0.0, 0.0)
            self._wco_counter = 0
        if 1 in g_groups:
            st.motion = g_groups[1]
        if axis_command == "motion":
            target = target_of(axis_words, nonmodal == 53)
            if motion in (2, 3) and arc_center is not None:
                await self._arc(target, arc_center, motion == 2, feed, gline, line_number, check)
            elif motion in (0, 1) or motion >= 38:
                if motion >= 38 and target == current:
                    return 33
                rate = feed if motion != 0 else 0.0
                if inverse_time and motion != 0:
                    dist = math.dist(current, target)
                    rate = dist * feed  # F is 1/minutes in G93: rate = distance / time
                await self._move(target, rate, feed, gline, line_number, check)
                if motion >= 38:
                    self._out(f"[PRB:{_fmt(target)}:1]")
        if 4 in m_groups:
            await self._sync()
            if m_groups[4] in (0, 1):
                if not check and m_groups[4] == 0:
                    self._hold = True
                    self.state = "Hold:0"
                    self._notify()
            else:
                # M2/M30: GRBL restores these modes (not the whole parser) and reports it.
                st.motion = 1
                st.plane = 17
                st.incremental = False
                st.inverse_time = False
                st.coord = 0
                st.spindle = 5
                st.coolant_flood = st.coolant_mist = False
                self.g92 = (0.0, 0.0, 0.0)
                self._wco_counter = 0
                self._out("[MSG:Pgm End]")
        return None

    def _max_rate(self, start: Vec, target: Vec) -> float:
        rates = [self.settings[110 + k] for k in range(3) if abs(target[k] - start[k]) > 1e-9]
        return min(rates) if rates else self.settings[110]

    def _line_block(
        self,
        target: Vec,
        rate: float,
        rapid: bool,
        gline: int,
        line_number: int | None,
        *,
        jog: bool = False,
    ) -> _Block:
        start = self.mpos
        limit = self._max_rate(start, target)
        return _Block(
            start=start,
            target=target,
            length_mm=math.dist(start, target),
            rate_mm_min=limit if rapid else min(rate, limit),
            requested_mm_min=rate,
            rapid=rapid,
            gline=gline,
            line_number=line_number,
            jog=jog,
        )

    async def _move(
        self,
        target: Vec,
        rate: float,
        feed: float,
        gline: int,
        line_number: int | None,
        check: bool,
    ) -> None:
        if not check:
            await self._plan(self._line_block(target, rate, rate <= 0, gline, line_number))
        self.mpos = target

    async def _arc(
        self,
        target: Vec,
        center: Vec,
        clockwise: bool,
        feed: float,
        gline: int,
        line_number: int | None,
        check: bool,
    ) -> None:
        """Cut an arc into segments within the arc tolerance ($12), as mc_arc does."""
        plane = self.modal.plane
        a0, a1, lin = {17: (0, 1, 2), 18: (2, 0, 1), 19: (1, 2, 0)}[plane]
        pos = self.mpos
        r0 = pos[a0] - center[a0]
        r1 = pos[a1] - center[a1]
        rt0 = target[a0] - center[a0]
        rt1 = target[a1] - center[a1]
        radius = math.hypot(r0, r1)
        travel = math.atan2(r0 * rt1 - r1 * rt0, r0 * rt0 + r1 * rt1)
        if clockwise:
            if travel >= -ARC_ANGULAR_TRAVEL_EPSILON:
                travel -= 2 * math.pi
        elif travel <= ARC_ANGULAR_TRAVEL_EPSILON:
            travel += 2 * math.pi
        tol = self.settings[12]
        segments = int(abs(0.5 * travel * radius) / math.sqrt(tol * (2 * radius - tol)))
        if check:
            self.mpos = target
            return
        if segments > 1:
            theta = travel / segments
            dlin = (target[lin] - pos[lin]) / segments
            for k in range(1, segments):
                ang = theta * k
                p = [0.0, 0.0, 0.0]
                p[a0] = center[a0] + r0 * math.cos(ang) - r1 * math.sin(ang)
                p[a1] = center[a1] + r0 * math.sin(ang) + r1 * math.cos(ang)
                p[lin] = pos[lin] + dlin * k
                seg = (p[0], p[1], p[2])
                await self._plan(self._line_block(seg, feed, False, gline, line_number))
                self.mpos = seg
        await self._plan(self._line_block(target, feed, False, gline, line_number))
        self.mpos = target


# -------------------------------------------------------------------------------------
# The sim-grbl driver


def grbl_settings(raw: Any) -> dict[int, float]:
    """Return `$n` settings from a mapping like {"120": 500} (driver settings, CLI)."""
    if not raw:
        return {}
    if not isinstance(raw, Mapping):
        raise DriverError("grbl_settings must map setting numbers to values, e.g. {'120': 500}")
    out: dict[int, float] = {}
    for key, value in raw.items():
        try:
            number, val = int(str(key).lstrip("$")), float(value)
        except (TypeError, ValueError):
            raise DriverError(f"bad GRBL setting {key!r}: {value!r}") from None
        if number not in DEFAULT_SETTINGS or not math.isfinite(val) or val < 0:
            raise DriverError(f"GRBL has no setting ${key} = {value!r}")
        out[number] = val
    return out


class SimGrblDriver(GrblDriver):
    """The grbl driver against its own GRBL simulator, started on connect()."""

    name = "sim-grbl"
    extra_settings = frozenset(
        {
            "speed_factor",
            "baud",
            "homing",
            "latency_s",
            "faults",
            "isolation",
            "dtr_reset",
            "grbl_settings",  # {"120": 500, ...}: the controller's `$n` values
        }
    )

    def __init__(self, settings: Mapping[str, Any]) -> None:
        settings = dict(settings)
        settings.setdefault("port", "")
        super().__init__(settings)
        self.simulator: GrblSimulator | None = None
        self._process: subprocess.Popen[bytes] | None = None
        isolation = str(self.settings.get("isolation", "thread"))
        if isolation not in ("thread", "process"):
            raise DriverError("sim-grbl isolation must be 'thread' or 'process'")
        if isolation == "process" and self.settings.get("faults"):
            raise DriverError("sim-grbl fault injection needs isolation 'thread'")
        self._isolation = isolation

    def _sim_args(self) -> dict[str, Any]:
        s = self.settings
        return {
            "speed_factor": float(s.get("speed_factor", 1.0)),
            "baud": int(s.get("baud", 115200)),
            "homing": bool(s.get("homing", False)),
            "latency_s": float(s.get("latency_s", 0.0)),
            "settings": grbl_settings(s.get("grbl_settings")),
        }

    async def connect(self) -> None:
        """Start a simulator (thread or subprocess), then connect to its pty."""
        await self._stop_sim()
        args = self._sim_args()
        if self._isolation == "thread":
            faults = Faults.from_settings(self.settings.get("faults"))
            self.simulator = GrblSimulator(faults=faults, **args)
            path = await asyncio.to_thread(self.simulator.start)
        else:
            path = await self._spawn(args)
        self.settings["port"] = path
        try:
            await super().connect()
        except BaseException:
            await self._stop_sim()
            raise

    async def _spawn(self, args: Mapping[str, Any]) -> str:
        cmd = [
            sys.executable,
            "-m",
            "drivers.sim.grbl",
            "--speed-factor",
            str(args["speed_factor"]),
            "--baud",
            str(args["baud"]),
            "--latency",
            str(args["latency_s"]),
        ]
        for key, value in args["settings"].items():
            cmd += ["--set", f"{key}={value}"]
        if args["homing"]:
            cmd.append("--homing")
        proc = await asyncio.to_thread(
            subprocess.Popen, cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self._process = proc
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(10):
                line = await asyncio.to_thread(proc.stdout.readline)
        except TimeoutError:
            await self._stop_sim()
            raise MachineOffline("the GRBL simulator process did not start") from None
        path = line.decode().strip()
        if not path.startswith("/dev/"):
            await self._stop_sim()
            raise MachineOffline(f"the GRBL simulator process did not start: {path!r}")
        return path

    async def _after_open(self) -> None:
        # An Arduino resets when the port opens (DTR); emulate that so the banner arrives.
        if not self.settings.get("dtr_reset", True):
            return
        if self.simulator is not None:
            self.simulator.power_cycle()
        elif self._process is not None:
            self._process.send_signal(signal.SIGUSR1)

    async def close(self) -> None:
        """Close the link, then stop the simulator."""
        await super().close()
        await self._stop_sim()

    async def _stop_sim(self) -> None:
        if self.simulator is not None:
            await asyncio.to_thread(self.simulator.stop)
            self.simulator = None
        if self._process is not None:
            proc, self._process = self._process, None
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 5)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv: list[str] | None = None) -> int:
    """Run a simulator standalone and print its pty path (SIGUSR1 power-cycles it)."""
    parser = argparse.ArgumentParser(prog="python -m drivers.sim.grbl", description=main.__doc__)
    parser.add_argument("--speed-factor", type=float, default=1.0)
    parser.add_argument("--baud", type=int, default=115200, help="0 disables metering")
    parser.add_argument("--latency", type=float, default=0.0, help="one-way latency, s")
    parser.add_argument("--homing", action="store_true", help="homing on: boot locked")
    parser.add_argument("--set", action="append", default=[], help="a setting, e.g. 120=500")
    opts = parser.parse_args(argv)
    sim = GrblSimulator(
        speed_factor=opts.speed_factor,
        baud=opts.baud,
        homing=opts.homing,
        latency_s=opts.latency,
        settings=grbl_settings(dict(item.split("=", 1) for item in opts.set)),
    )

    async def run() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(sim.serve(on_ready=lambda p: print(p, flush=True)))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        loop.add_signal_handler(signal.SIGUSR1, sim._do_power_cycle)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
