"""The GRBL 1.1 driver: CNC mills and lasers on a serial port.

Program lines are streamed by character counting (GRBL's own recommended method, as its
doc/script/stream.py does): the bytes of every unanswered line, newline included, stay at
or below 127, so the controller's 128-byte receive buffer never overflows, and each `ok` or
`error:N` frees its line's bytes. Commands that write EEPROM are sent alone. Real-time bytes
(`?`, `!`, `~`, Ctrl-X, overrides) bypass the buffer and never count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from drivers.base import (
    Driver,
    DriverError,
    EventKind,
    FirmwareError,
    MachineBusy,
    MachineOffline,
    MachineState,
    Program,
    Progress,
    ProtocolError,
)
from drivers.grbl_codes import (
    CRITICAL_ALARMS,
    alarm_meaning,
    describe_alarm,
    describe_error,
    error_meaning,
)
from drivers.planner import MachineLimits
from drivers.serial_io import AsyncSerialLink

log = logging.getLogger(__name__)

SETTING_LINE_RE = re.compile(r"^\$(\d+)=\s*([-+]?\d*\.?\d+)")


class CommandRefused(FirmwareError):
    """GRBL answered a command with `error:N`; `reply` holds every line it sent."""

    def __init__(self, command: str, reply: list[str]) -> None:
        try:
            what = describe_error(int(reply[-1][6:]))
        except ValueError:
            what = reply[-1]
        super().__init__(f"GRBL refused `{command[:40]}`: {what}")
        self.reply = reply


RX_BUFFER_SIZE = 128
#: GRBL keeps at most 79 significant characters of a line (LINE_BUFFER_SIZE 80).
MAX_LINE_CHARS = 79
LOCKED_MESSAGE = "locked: home ($H) or unlock ($X)"

# Real-time bytes: act at once, never enter the line buffer, never followed by a newline.
RT_STATUS = b"?"
RT_FEED_HOLD = b"!"
RT_CYCLE_START = b"~"
RT_SOFT_RESET = b"\x18"
RT_SAFETY_DOOR = b"\x84"
RT_JOG_CANCEL = b"\x85"
RT_FEED_OV_RESET, RT_FEED_OV_PLUS_10, RT_FEED_OV_MINUS_10 = b"\x90", b"\x91", b"\x92"
RT_FEED_OV_PLUS_1, RT_FEED_OV_MINUS_1 = b"\x93", b"\x94"
RT_RAPID_OV = {100: b"\x95", 50: b"\x96", 25: b"\x97"}
RT_SPINDLE_OV_RESET, RT_SPINDLE_OV_PLUS_10, RT_SPINDLE_OV_MINUS_10 = b"\x99", b"\x9a", b"\x9b"
RT_SPINDLE_OV_PLUS_1, RT_SPINDLE_OV_MINUS_1 = b"\x9c", b"\x9d"
#: real-time commands send() accepts while a program runs
REALTIME_COMMANDS = frozenset(
    {"?", "!", "~", "\x18", "\x84", "\x85", "\x9e", "\xa0", "\xa1"}
    | {chr(c) for c in range(0x90, 0x9E)}
)

BANNER_RE = re.compile(r"^Grbl (\S+) \['\$' for help\]")
EEPROM_SYSTEM_RE = re.compile(r"^\$(\d+=|N\d*=|RST=|I=)")
G10_RE = re.compile(r"G0*10(?![0-9.])")
L2_RE = re.compile(r"L0*(2|20)(?![0-9.])")
G28_30_STORE_RE = re.compile(r"G0*(28|30)\.1(?![0-9])")
G4_P_RE = re.compile(r"G0*4(?![0-9.]).*?P([0-9.]+)")
GRBL_STATES = frozenset({"Idle", "Run", "Hold", "Jog", "Alarm", "Door", "Check", "Home", "Sleep"})


def compact(line: str) -> str:
    """Return a line as GRBL sees it: spaces removed, upper case."""
    return "".join(line.split()).upper()


def is_eeprom_command(line: str) -> bool:
    """Return whether a line writes EEPROM and so must be sent alone."""
    c = compact(line)
    if c.startswith("$"):
        return bool(EEPROM_SYSTEM_RE.match(c))
    if G10_RE.search(c) and L2_RE.search(c):
        return True
    return bool(G28_30_STORE_RE.search(c))


def dwell_seconds(line: str) -> float:
    """Return the dwell a line asks for (G4 P<seconds>), or 0."""
    m = G4_P_RE.search(compact(line))
    if not m:
        return 0.0
    try:
        return float(m.group(1))
    except ValueError:
        return 0.0


# -------------------------------------------------------------------------------------
# Status reports


@dataclass(frozen=True, slots=True)
class GrblReport:
    """One `<...>` status report, parsed."""

    state: str  # "Idle", "Hold:0", ...
    mpos: tuple[float, ...] | None = None
    wpos: tuple[float, ...] | None = None
    wco: tuple[float, ...] | None = None
    feed: float | None = None
    spindle: float | None = None
    planner_free: int | None = None  # Bf: blocks available
    rx_free: int | None = None  # Bf: bytes available
    line: int | None = None  # Ln:
    overrides: tuple[int, int, int] | None = None  # feed, rapid, spindle %
    accessories: str | None = None  # A:
    pins: str | None = None  # Pn:

    @property
    def base_state(self) -> str:
        """Return the state without its sub-state (`Hold:0` -> `Hold`)."""
        return self.state.split(":", 1)[0]


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def parse_status_report(line: str) -> GrblReport:
    """Parse `<Idle|MPos:...|...>`; raise ProtocolError if it is not a status report."""
    if not (line.startswith("<") and line.endswith(">")):
        raise ProtocolError(f"not a GRBL status report: {line!r}")
    fields = line[1:-1].split("|")
    state = fields[0]
    if state.split(":", 1)[0] not in GRBL_STATES:
        raise ProtocolError(f"unknown GRBL state {state!r} in {line!r}")
    values: dict[str, Any] = {}
    try:
        for f in fields[1:]:
            key, _, val = f.partition(":")
            if key == "MPos":
                values["mpos"] = _floats(val)
            elif key == "WPos":
                values["wpos"] = _floats(val)
            elif key == "WCO":
                values["wco"] = _floats(val)
            elif key == "FS":
                feed, spindle = _floats(val)
                values["feed"], values["spindle"] = feed, spindle
            elif key == "F":
                values["feed"] = float(val)
            elif key == "Bf":
                blocks, rx = val.split(",")
                values["planner_free"], values["rx_free"] = int(blocks), int(rx)
            elif key == "Ln":
                values["line"] = int(val)
            elif key == "Ov":
                f_ov, r_ov, s_ov = (int(x) for x in val.split(","))
                values["overrides"] = (f_ov, r_ov, s_ov)
            elif key == "A":
                values["accessories"] = val
            elif key == "Pn":
                values["pins"] = val
            # Unknown fields are skipped: GRBL forks add their own.
    except ValueError as exc:
        raise ProtocolError(f"malformed GRBL status report {line!r}: {exc}") from exc
    return GrblReport(state=state, **values)


# -------------------------------------------------------------------------------------
# Character counting


@dataclass(slots=True)
class _Pending:
    """A line sent and not yet answered."""

    text: str
    nbytes: int  # len + newline
    index: int | None = None  # the program line, 0-based; None for send()
    future: asyncio.Future[list[str]] | None = None
    info: list[str] = field(default_factory=list)  # [GC:..], $n=v, ... before the reply


class CharCounter:
    """Bytes of unanswered lines in GRBL's receive buffer, oldest first."""

    def __init__(self, capacity: int = RX_BUFFER_SIZE - 1) -> None:
        self.capacity = capacity
        self._lines: deque[_Pending] = deque()
        self.used = 0
        self.max_used = 0

    def __len__(self) -> int:
        return len(self._lines)

    def fits(self, nbytes: int) -> bool:
        """Return whether a line of `nbytes` (newline included) may be sent now."""
        return self.used + nbytes <= self.capacity

    def push(self, pending: _Pending) -> None:
        """Record a line as sent."""
        if pending.nbytes > self.capacity:
            raise ValueError(f"a line of {pending.nbytes} bytes can never fit in the buffer")
        self._lines.append(pending)
        self.used += pending.nbytes
        self.max_used = max(self.max_used, self.used)

    def pop(self) -> _Pending | None:
        """Free the oldest line's bytes on its reply; None if nothing is in flight."""
        if not self._lines:
            return None
        p = self._lines.popleft()
        self.used -= p.nbytes
        return p

    def head(self) -> _Pending | None:
        """Return the oldest unanswered line."""
        return self._lines[0] if self._lines else None

    def clear(self) -> list[_Pending]:
        """Forget every line (after a reset flushed GRBL's buffer); return them."""
        lines = list(self._lines)
        self._lines.clear()
        self.used = 0
        return lines

    def pending(self) -> list[_Pending]:
        """Return the unanswered lines, oldest first."""
        return list(self._lines)


# -------------------------------------------------------------------------------------
# Jobs


def grbl_motion_limits(values: Mapping[int, float], planner_blocks: int = 15) -> dict[str, Any]:
    """Return the motion limits that GRBL settings (`$$` values) give, as a plain dict.

    Keys are MachineLimits field names ($110-$112 become mm/s); settings that are missing
    keep GRBL 1.1's defaults. ``planner_blocks`` is the usable count `[OPT:]` reports (15).
    """
    stock = MachineLimits.grbl()

    def get(key: int, default: float) -> float:
        v = values.get(key)
        return float(v) if v is not None and v > 0 else default

    acc = tuple(get(120 + k, stock.max_acceleration[k]) for k in range(3))
    rate = tuple(get(110 + k, stock.max_feedrate[k] * 60) / 60 for k in range(3))
    limits = MachineLimits(
        max_acceleration=(acc[0], acc[1], acc[2], stock.max_acceleration[3]),
        max_feedrate=(rate[0], rate[1], rate[2], stock.max_feedrate[3]),
        max_jerk=stock.max_jerk,
        print_acceleration=stock.print_acceleration,
        retract_acceleration=stock.retract_acceleration,
        travel_acceleration=stock.travel_acceleration,
        junction_deviation=get(11, stock.junction_deviation or 0.01),
        block_buffer_size=max(2, planner_blocks + 1),
        firmware="grbl",
        arc_tolerance=get(12, stock.arc_tolerance),
        laser_mode=bool(values.get(32, 0)),
        spindle_min=float(values.get(31, 0.0)),
        spindle_max=float(values[30]) if 30 in values else None,
    )
    out = limits.as_dict()
    out["settings"] = {f"${k}": v for k, v in sorted(values.items())}
    return out


class _JobStop(Exception):
    """The streaming task must stop: the job failed or was cancelled."""


@dataclass(slots=True)
class _Job:
    program: Program
    check_only: bool = False
    progress: Progress = field(default_factory=lambda: Progress(lines_total=0))
    sent: int = 0
    acked: int = 0
    last_acked_index: int | None = None
    errors: list[tuple[int, str, int]] = field(default_factory=list)  # index, line, code
    failure: dict[str, Any] | None = None
    failure_needs_stop: bool = False
    cancel_requested: bool = False
    emergency: bool = False
    stop_alarm: int | None = None
    paused: bool = False
    task: asyncio.Task[None] | None = None
    started_mono: float = field(default_factory=time.monotonic)


class GrblDriver(Driver):
    """GRBL 1.1 over serial, streamed by character counting."""

    name = "grbl"
    known_settings: ClassVar[frozenset[str]] = frozenset(
        {
            "port",
            "baudrate",
            "check_mode",
            "stop_on_error",
            "streaming",  # "char-count" (default) or "send-wait"
            "poll_interval_s",
            "status_timeout_s",
            "reply_timeout_s",
            "boot_timeout_s",
            "homing_timeout_s",
            "hold_timeout_s",
        }
    )
    extra_settings: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        unknown = set(self.settings) - self.known_settings - self.extra_settings
        if unknown:
            valid = ", ".join(sorted(self.known_settings | self.extra_settings))
            raise DriverError(
                f"unknown {self.name} settings: {', '.join(sorted(unknown))}; valid: {valid}"
            )
        s = self.settings
        self.baudrate = int(s.get("baudrate", 115200))
        self.check_mode = bool(s.get("check_mode", False))
        self.stop_on_error = bool(s.get("stop_on_error", True))
        self.streaming = str(s.get("streaming", "char-count"))
        if self.streaming not in ("char-count", "send-wait"):
            raise DriverError("streaming must be 'char-count' or 'send-wait'")
        # GRBL asks hosts to poll no faster than about 5 per second.
        self.poll_interval_s = max(0.2, float(s.get("poll_interval_s", 0.2)))
        self.status_timeout_s = float(s.get("status_timeout_s", 10.0))
        self.reply_timeout_s = float(s.get("reply_timeout_s", 10.0))
        self.boot_timeout_s = float(s.get("boot_timeout_s", 2.5))
        self.homing_timeout_s = float(s.get("homing_timeout_s", 120.0))
        self.hold_timeout_s = float(s.get("hold_timeout_s", 30.0))

        self._link: AsyncSerialLink | None = None
        self._cc = CharCounter()
        self._reader: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._job: _Job | None = None
        self._cmd_lock = asyncio.Lock()
        self._space = asyncio.Event()  # set whenever a reply frees bytes
        self._report_event = asyncio.Event()
        self._banner_event = asyncio.Event()
        self._report: GrblReport | None = None
        self._report_line = ""
        self._report_seq = 0
        self._reply_seq = 0  # replies received; a report is fresh if it came after one
        self._report_after_reply = 0  # _reply_seq when the latest report arrived
        self._wco: tuple[float, ...] = (0.0, 0.0, 0.0)
        self._planner_size = 15
        self._locked = False
        self._critical = False
        self._homing = False
        self._alarm: int | None = None
        self._last_rx = time.monotonic()
        self._last_reply = time.monotonic()
        self._message = ""  # sticky: the outcome of the last job
        self._last_progress_publish = 0.0
        self._phase = "offline"  # offline | connecting | online
        self._offline_reason = "not connected"
        self._last_poll_at = 0.0
        self._last_report_at = 0.0
        self.firmware: str | None = None
        # The controller's own motion limits, read with `$$` at connect (MachineLimits field
        # names, plus "source", "read_at" and the raw "settings"); None until read.
        self.motion_limits: dict[str, Any] | None = None

    # ---------------------------------------------------------------------------------
    # Connection

    async def connect(self) -> None:
        """Open the port, wait for GRBL's banner (soft reset if none), read its state."""
        port = str(self.settings.get("port") or "")
        if not port:
            raise DriverError("a grbl machine needs a `port` setting, e.g. /dev/ttyUSB0")
        await self._close_link()
        self._set_status(state=MachineState.CONNECTING, message=f"opening {port}")
        link = AsyncSerialLink(port, self.baudrate)
        try:
            await link.open()
        except MachineOffline as exc:
            self._offline_reason = str(exc)
            self._set_status(state=MachineState.OFFLINE, message=str(exc))
            raise
        self._link = link
        self._cc.clear()
        self._phase = "connecting"
        self._locked = self._critical = self._homing = False
        self._alarm = None
        self._banner_event.clear()
        self._last_rx = time.monotonic()
        self._reader = asyncio.create_task(self._read_loop(), name=f"grbl-reader-{port}")
        try:
            await self._after_open()
            if not await self._wait_banner(self.boot_timeout_s):
                log.info("no GRBL banner on %s; sending a soft reset", port)
                link.write(RT_SOFT_RESET)
                if not await self._wait_banner(self.boot_timeout_s):
                    raise MachineOffline(
                        f"no GRBL banner on {port} at {self.baudrate} baud: check the port, "
                        "the baud rate and that the controller runs GRBL 1.1"
                    )
            report = await self._fresh_report(within=max(2.0, self.poll_interval_s * 5))
            if report is None:
                raise MachineOffline(f"GRBL on {port} does not answer status queries (`?`)")
            with contextlib.suppress(DriverError):
                await self._command("$I", within=5.0)
            try:
                await self._read_motion_limits(port)
            except DriverError as exc:
                log.warning("could not read GRBL settings ($$) on %s: %s", port, exc)
        except BaseException:
            await self._close_link()
            raise
        self._phase = "online"
        self._poller = asyncio.create_task(self._poll_loop(), name=f"grbl-poller-{port}")
        self._publish_state()

    async def _read_motion_limits(self, port: str) -> None:
        """Read `$$` and keep the settings that time motion as `motion_limits`."""
        lines = await self._command("$$", within=5.0)
        values: dict[int, float] = {}
        for line in lines:
            m = SETTING_LINE_RE.match(line.strip())
            if m:
                values[int(m.group(1))] = float(m.group(2))
        if not values:
            raise DriverError(f"`$$` returned no settings: {lines[-1:] or 'nothing'}")
        limits = grbl_motion_limits(values, planner_blocks=self._planner_size)
        self.motion_limits = {
            **limits,
            "source": f"GRBL $$ on {port}",
            "read_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    async def _after_open(self) -> None:
        """Run right after the port opens (the simulator emulates a DTR reset here)."""

    async def _wait_banner(self, within: float) -> bool:
        try:
            async with asyncio.timeout(within):
                await self._banner_event.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Close the link; a running job ends as FAILED. Safe to call twice."""
        await self._close_link()

    async def _close_link(self) -> None:
        job = self._job
        if job is not None and job.task is not None and not job.task.done():
            self._fail_job(job, "the driver was closed while the program ran", needs_stop=False)
            job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job.task
        for task in (self._poller, self._reader):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._poller = self._reader = None
        if self._link is not None:
            self._link.close("closed by the driver")
            self._link = None
        self._fail_pending(MachineOffline("the link was closed"))
        if self._phase != "offline":
            self._phase = "offline"
            self._offline_reason = "disconnected"
        if self._status.state is not MachineState.OFFLINE:
            self._set_status(state=MachineState.OFFLINE, message=self._offline_reason)

    # ---------------------------------------------------------------------------------
    # Reading

    async def _read_loop(self) -> None:
        link = self._link
        assert link is not None
        try:
            while True:
                try:
                    line = await link.readline(timeout=1.0)
                except TimeoutError:
                    continue
                self._last_rx = time.monotonic()
                self._handle_line(line.strip())
        except MachineOffline as exc:
            self._on_link_lost(str(exc))

    def _handle_line(self, line: str) -> None:
        if not line:
            return
        if line == "ok":
            self._on_reply(None, line)
        elif line.startswith("error:"):
            try:
                code = int(line[6:])
            except ValueError:
                log.warning("GRBL sent a malformed error line: %r", line)
                code = 0
            self._on_reply(code, line)
        elif line.startswith("<") and line.endswith(">"):
            try:
                report = parse_status_report(line)
            except ProtocolError as exc:
                log.warning("%s", exc)
                return
            self._on_report(report, line)
        elif line.startswith("ALARM:"):
            try:
                code = int(line[6:])
            except ValueError:
                code = 0
            self._on_alarm(code)
        elif BANNER_RE.match(line):
            self._on_banner(line)
        elif line.startswith("[MSG:"):
            self._on_message(line[5:-1] if line.endswith("]") else line[5:])
            self._attach_info(line)
        elif line.startswith(("[", "$", ">")):
            self._attach_info(line)
        else:
            # A garbled line (noise on the link); its reply, if it was one, is lost and the
            # reply timeout will say so.
            log.warning("unrecognised line from GRBL: %r", line)
            self._emit(EventKind.LOG, line=line, unrecognised=True)

    def _attach_info(self, line: str) -> None:
        head = self._cc.head()
        if head is not None and head.future is not None:
            head.info.append(line)
        if line.startswith("[VER:"):
            self.firmware = line[1:-1]
        elif line.startswith("[OPT:"):
            parts = line[5:-1].split(",")
            if len(parts) >= 2 and parts[1].isdigit():
                self._planner_size = int(parts[1])
        self._emit(EventKind.LOG, line=line)

    def _on_message(self, msg: str) -> None:
        if "to unlock" in msg:
            self._locked = True
        elif msg == "Reset to continue":
            self._critical = True
        elif msg.startswith("Caution: Unlocked"):
            self._locked = False
            self._alarm = None
        self._publish_state()

    def _on_reply(self, code: int | None, line: str) -> None:
        self._reply_seq += 1
        self._last_reply = time.monotonic()
        pending = self._cc.pop()
        self._space.set()
        if pending is None:
            log.warning("GRBL answered %r with no line in flight; ignored", line)
            return
        if pending.future is not None:
            if not pending.future.done():
                pending.future.set_result([*pending.info, line])
            return
        job = self._job
        if job is None or pending.index is None:
            return
        job.acked += 1
        job.last_acked_index = pending.index
        job.progress = Progress(
            lines_total=job.progress.lines_total,
            lines_sent=job.sent,
            lines_acked=job.acked,
            started_at=job.progress.started_at,
            last_line=pending.text,
        )
        if code is not None:
            job.errors.append((pending.index, pending.text, code))
            if job.check_only:
                pass
            elif self.stop_on_error:
                self._fail_job(
                    job,
                    f"line {pending.index + 1} `{pending.text}`: {describe_error(code)}",
                    needs_stop=True,
                    line_number=pending.index + 1,
                    line=pending.text,
                    code=code,
                    meaning=error_meaning(code),
                )
            else:
                log.warning(
                    "GRBL rejected line %s %r: %s", pending.index + 1, pending.text,
                    describe_error(code),
                )  # fmt: skip
                self._emit(
                    EventKind.LOG,
                    line=line,
                    line_number=pending.index + 1,
                    program_line=pending.text,
                    meaning=error_meaning(code),
                )
        self._publish_progress(job)

    def _on_report(self, report: GrblReport, line: str) -> None:
        self._report = report
        self._report_line = line
        self._report_seq += 1
        self._last_report_at = time.monotonic()
        self._report_after_reply = self._reply_seq
        if report.wco is not None:
            self._wco = report.wco
        if report.base_state == "Alarm":
            self._locked = True
        elif self._locked and report.base_state != "Alarm":
            self._locked = False
            self._alarm = None
        self._report_event.set()
        self._report_event = asyncio.Event()
        self._publish_state()

    def _on_alarm(self, code: int) -> None:
        self._alarm = code
        self._locked = True
        if code in CRITICAL_ALARMS:
            self._critical = True
        text = describe_alarm(code)
        log.warning("GRBL alarm: %s", text)
        self._emit(EventKind.LOG, line=f"ALARM:{code}", meaning=alarm_meaning(code))
        job = self._job
        if job is not None and job.task is not None and not job.task.done():
            if job.failure is None and not job.cancel_requested:
                self._fail_job(
                    job, text, needs_stop=False, cause="alarm", alarm=code,
                    meaning=alarm_meaning(code),
                )  # fmt: skip
            else:
                job.stop_alarm = code  # e.g. ALARM:3 from a stop that reset while moving
        self._publish_state()

    def _on_banner(self, line: str) -> None:
        m = BANNER_RE.match(line)
        version = m.group(1) if m else "?"
        self._status = self._status.evolve(firmware=f"Grbl {version}")
        if not version.startswith("1.1"):
            log.warning("GRBL %s: this driver speaks GRBL 1.1; expect differences", version)
        lost = self._cc.clear()
        self._space.set()
        for p in lost:
            if p.future is not None and not p.future.done():
                p.future.set_exception(ProtocolError(f"the controller reset before `{p.text}`"))
        self._critical = False
        self._locked = False  # the unlock message follows the banner if still locked
        self._banner_event.set()
        job = self._job
        if (
            job is not None
            and job.task is not None
            and not job.task.done()
            and job.failure is None
            and not job.cancel_requested
            and not job.check_only
        ):
            self._fail_job(job, "the controller reset unexpectedly", needs_stop=False)
        self._emit(EventKind.LOG, line=line)

    def _on_link_lost(self, reason: str) -> None:
        if self._phase == "offline":
            return
        log.warning("GRBL link lost: %s", reason)
        self._phase = "offline"
        self._offline_reason = f"link lost: {reason}"
        if self._link is not None:
            self._link.close(reason)
        job = self._job
        last: int | None = None
        last_line: str | None = None
        if job is not None and job.task is not None and not job.task.done():
            if job.last_acked_index is not None:
                last = job.last_acked_index + 1
                last_line = job.program.lines[job.last_acked_index]
            self._fail_job(job, f"link lost: {reason}", needs_stop=False, cause="link")
        self._fail_pending(MachineOffline(reason))
        self._emit(
            EventKind.DISCONNECTED,
            reason=reason,
            last_acked_line_number=last,
            last_acked_line=last_line,
        )
        self._set_status(state=MachineState.OFFLINE, message=f"link lost: {reason}")

    def _fail_pending(self, exc: Exception) -> None:
        for p in self._cc.clear():
            if p.future is not None and not p.future.done():
                p.future.set_exception(exc)
        self._space.set()

    # ---------------------------------------------------------------------------------
    # Status

    async def _poll_now(self) -> float:
        """Send `?` as soon as the rate limit allows; return when it (or a later one) went."""
        want = time.monotonic()
        while True:
            if self._last_poll_at >= want:
                return self._last_poll_at  # another caller sent one after we asked
            wait = self._last_poll_at + self.poll_interval_s - time.monotonic()
            if wait <= 0:
                self._write_rt(RT_STATUS)
                self._last_poll_at = time.monotonic()
                return self._last_poll_at
            await asyncio.sleep(wait)

    async def _poll_loop(self) -> None:
        while self._link is not None and self._link.is_open:
            suspended = self._homing or self._critical
            if not suspended:
                with contextlib.suppress(MachineOffline):
                    await self._poll_now()
                silent = time.monotonic() - self._last_rx
                if silent > self.status_timeout_s:
                    self._on_link_lost(
                        f"the controller stopped answering (nothing for {silent:.1f} s)"
                    )
                    return
            else:
                self._last_rx = time.monotonic()
            await asyncio.sleep(self.poll_interval_s)

    async def _fresh_report(self, within: float) -> GrblReport | None:
        """Ask for a status report and return it, or None after `within`."""
        deadline = time.monotonic() + within
        asked = await self._poll_now()
        while self._last_report_at <= asked:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ev = self._report_event
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, self.poll_interval_s * 3)):
                    await ev.wait()
            if self._last_report_at <= asked:
                asked = await self._poll_now()  # GRBL drops `?` while writing EEPROM
        return self._report

    async def _wait_report(
        self, predicate: Callable[[GrblReport], bool], within: float
    ) -> GrblReport | None:
        """Wait for a status report (from the poller) that satisfies `predicate`."""
        deadline = time.monotonic() + within
        while True:
            self._check_link()
            rep = self._report
            if rep is not None and predicate(rep):
                return rep
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ev = self._report_event
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 1.0)):
                    await ev.wait()

    def _positions(self, report: GrblReport) -> tuple[dict[str, float], dict[str, float]]:
        axes = "XYZABC"
        wco = self._wco
        if report.mpos is not None:
            mpos = report.mpos
            wpos = tuple(m - (wco[i] if i < len(wco) else 0.0) for i, m in enumerate(mpos))
        elif report.wpos is not None:
            wpos = report.wpos
            mpos = tuple(w + (wco[i] if i < len(wco) else 0.0) for i, w in enumerate(wpos))
        else:
            return {}, {}
        work = {axes[i]: round(v, 4) for i, v in enumerate(wpos)}
        machine = {axes[i]: round(v, 4) for i, v in enumerate(mpos)}
        return work, machine

    def _machine_state(self) -> tuple[MachineState, str]:
        rep = self._report
        job = self._job
        running = job is not None and job.task is not None and not job.task.done()
        if self._critical:
            alarm = describe_alarm(self._alarm) if self._alarm else "a critical alarm"
            return MachineState.ERROR, f"{alarm}; reset the controller (Ctrl-X) to continue"
        base = rep.base_state if rep is not None else "Idle"
        if self._locked or base == "Alarm":
            if self._alarm:
                return MachineState.ERROR, f"{describe_alarm(self._alarm)}; {LOCKED_MESSAGE}"
            return MachineState.ERROR, LOCKED_MESSAGE
        if running and job is not None:
            if job.paused or base in ("Hold", "Door"):
                msg = "safety door open" if base == "Door" else "paused (feed hold)"
                return MachineState.PAUSED, msg
            what = "checking" if job.check_only else "running"
            return MachineState.RUNNING, f"{what} {job.program.name}"
        if base in ("Run", "Jog", "Home"):
            return MachineState.RUNNING, {"Home": "homing", "Jog": "jogging"}.get(base, "moving")
        if base in ("Hold", "Door"):
            msg = "safety door open" if base == "Door" else "feed hold: resume (~) or reset"
            return MachineState.PAUSED, msg
        if base == "Sleep":
            return MachineState.IDLE, "sleeping: reset to wake"
        if base == "Check":
            return MachineState.IDLE, "check mode ($C)"
        return MachineState.IDLE, self._message or "idle"

    def _publish_state(self) -> None:
        if self._phase == "offline":
            state, message = MachineState.OFFLINE, self._offline_reason
        elif self._phase == "connecting":
            state, message = MachineState.CONNECTING, "waiting for GRBL"
        else:
            state, message = self._machine_state()
        changes: dict[str, Any] = {"state": state, "message": message}
        rep = self._report
        if rep is not None:
            work, machine = self._positions(rep)
            changes.update(
                position=work,
                machine_position=machine,
                feed_mm_min=rep.feed,
                spindle_rpm=rep.spindle,
                extra={
                    "grbl_state": rep.state,
                    "buffer": (
                        {"planner_free": rep.planner_free, "rx_free": rep.rx_free}
                        if rep.planner_free is not None
                        else None
                    ),
                    "overrides": (
                        dict(zip(("feed", "rapid", "spindle"), rep.overrides, strict=True))
                        if rep.overrides
                        else self._status.extra.get("overrides")
                    ),
                    "line": rep.line,
                    "wco": list(self._wco),
                    "alarm": self._alarm,
                },
            )
        if self._job is not None:
            changes["progress"] = self._job.progress
        self._set_status(**changes)

    def _publish_progress(self, job: _Job) -> None:
        # Acks arrive hundreds of times a second; readers poll status(), so publish the
        # event at most 10 times a second but keep the snapshot current.
        self._status = self._status.evolve(progress=job.progress)
        now = time.monotonic()
        if now - self._last_progress_publish >= 0.1:
            self._last_progress_publish = now
            self._publish_state()

    # ---------------------------------------------------------------------------------
    # Sending

    def _check_link(self) -> AsyncSerialLink:
        link = self._link
        if link is None or not link.is_open:
            raise MachineOffline("the GRBL machine is not connected")
        return link

    def _write_rt(self, byte: bytes) -> None:
        self._check_link().write(byte)

    def _send_line(self, text: str, *, index: int | None, want_future: bool) -> _Pending:
        link = self._check_link()
        fut: asyncio.Future[list[str]] | None = None
        if want_future:
            fut = asyncio.get_running_loop().create_future()
        p = _Pending(text=text, nbytes=len(text) + 1, index=index, future=fut)
        self._cc.push(p)
        link.write(text.encode("ascii") + b"\n")
        return p

    def _reply_stalled(self, since: float, extra_s: float = 0.0) -> bool:
        """Return whether GRBL has been idle with our lines unanswered for too long."""
        if not self._cc.pending() or self._homing:
            return False
        rep = self._report
        if rep is None or rep.base_state not in ("Idle", "Check"):
            return False
        if self._report_after_reply != self._reply_seq:
            return False  # the report predates the latest reply
        waited = time.monotonic() - max(since, self._last_reply)
        return waited > self.reply_timeout_s + extra_s

    def _stall_error(self) -> ProtocolError:
        head = self._cc.head()
        what = f"`{head.text}`" if head else "a line"
        return ProtocolError(
            f"no reply to {what} for {self.reply_timeout_s:.0f} s while the controller is idle:"
            " the line was lost on the link (check the cable and electrical noise)"
        )

    async def _await_reply(self, p: _Pending, *, within: float | None) -> list[str]:
        """Wait for a line's reply; fail if the link dies or GRBL idles without answering."""
        assert p.future is not None
        sent_at = time.monotonic()
        extra = dwell_seconds(p.text)
        while True:
            try:
                async with asyncio.timeout(1.0):
                    return await asyncio.shield(p.future)
            except TimeoutError:
                pass
            self._check_link()
            if within is not None and time.monotonic() - sent_at > within:
                raise ProtocolError(f"no reply to `{p.text}` within {within:.0f} s")
            if self._reply_stalled(sent_at, extra):
                raise self._stall_error()

    async def _command(self, text: str, *, within: float | None = None) -> list[str]:
        """Send one line alone and return its reply lines (info lines, then ok/error:N)."""
        if self._critical:
            raise FirmwareError(
                f"the controller halted on {describe_alarm(self._alarm or 0)}: reset it "
                "(Ctrl-X) before sending commands"
            )
        await self._wait_drained(within=self.reply_timeout_s)
        p = self._send_line(text, index=None, want_future=True)
        return await self._await_reply(p, within=within)

    async def _wait_drained(self, *, within: float) -> None:
        """Wait until no line is unanswered (for lines that must be sent alone)."""
        since = time.monotonic()
        while self._cc.pending():
            self._check_link()
            if self._job is not None and self._job.failure is not None and self._job_running():
                raise _JobStop()
            self._space.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._space.wait()
            if self._reply_stalled(since):
                raise self._stall_error()
            if self._job is None and time.monotonic() - since > within:
                n = len(self._cc.pending())
                raise DriverError(
                    f"{n} earlier lines are still unanswered; reset the controller (Ctrl-X)"
                )

    def _job_running(self) -> bool:
        job = self._job
        return job is not None and job.task is not None and not job.task.done()

    async def send(self, command: str) -> list[str]:
        """Send one command and return GRBL's reply lines; real-time bytes return at once.

        Raises CommandRefused (a FirmwareError, with the reply lines) when GRBL answers
        `error:N`.
        """
        if command in REALTIME_COMMANDS:
            self._write_rt(command.encode("latin-1"))
            if command == "?":
                rep = await self._fresh_report(within=2.0)
                return [self._report_line] if rep is not None else []
            return []
        if self._job_running():
            raise MachineBusy(
                "a program is running: only real-time commands (?, !, ~, overrides, jog "
                "cancel) can be sent now"
            )
        text = command.strip()
        if not text or "\n" in text or "\r" in text:
            raise DriverError("send one command line at a time (no newlines)")
        problem = self._line_problem(text)
        if problem:
            raise DriverError(f"`{text[:40]}` {problem}")
        cmd = compact(text)
        async with self._cmd_lock:
            if cmd == "$H":
                lines = await self._home()
                resets = False
            else:
                if is_eeprom_command(text):
                    await self._wait_idle(within=self.reply_timeout_s)
                # `$C` (leaving check mode) and `$RST=` reset GRBL after their `ok`.
                self._banner_event.clear()
                lines = await self._command(text, within=None)
                resets = cmd.startswith("$RST=") or (cmd == "$C" and "[MSG:Disabled]" in lines)
            if resets and lines[-1] == "ok":
                if not await self._wait_banner(5.0):
                    raise ProtocolError(f"GRBL did not restart after `{text}`")
                await self._fresh_report(within=2.0)
        if lines and lines[-1].startswith("error:"):
            # GRBL refused the line: the caller must not read its reply as a success.
            raise CommandRefused(text, lines)
        return lines

    async def _wait_idle(self, within: float) -> None:
        """Wait until GRBL reports Idle (or Alarm) in a report newer than the last reply."""
        deadline = time.monotonic() + within
        while True:
            rep = await self._fresh_report(within=max(0.1, deadline - time.monotonic()))
            if rep is not None and rep.base_state in ("Idle", "Alarm", "Check"):
                return
            if rep is not None and rep.base_state in ("Run", "Jog", "Home", "Hold", "Door"):
                deadline = max(deadline, time.monotonic() + 1.0)  # moving: still alive
            if time.monotonic() > deadline:
                raise ProtocolError("GRBL did not become idle")
            await asyncio.sleep(self.poll_interval_s)

    # ---------------------------------------------------------------------------------
    # Machine commands

    async def home(self) -> list[str]:
        """Run the homing cycle ($H); raise FirmwareError if GRBL refuses."""
        if self._job_running():
            raise MachineBusy("a program is running")
        async with self._cmd_lock:
            lines = await self._home()
        if lines and lines[-1].startswith("error:"):
            code = int(lines[-1][6:])
            raise FirmwareError(f"homing refused: {describe_error(code)}")
        return lines

    async def _home(self) -> list[str]:
        # GRBL does not answer status queries while homing: suspend the watchdog.
        self._check_link()
        self._homing = True
        try:
            lines = await self._command("$H", within=self.homing_timeout_s)
        finally:
            self._homing = False
            self._last_rx = time.monotonic()
        await self._fresh_report(within=2.0)
        return lines

    async def unlock(self) -> list[str]:
        """Clear the alarm lock ($X) without homing; the position may be wrong."""
        lines = await self.send("$X")
        await self._fresh_report(within=2.0)
        return lines

    async def soft_reset(self, within: float = 5.0) -> None:
        """Reset the controller (Ctrl-X) and wait for its banner."""
        self._banner_event.clear()
        self._write_rt(RT_SOFT_RESET)
        if not await self._wait_banner(within):
            raise ProtocolError(f"GRBL did not restart within {within:.0f} s of a soft reset")
        await self._fresh_report(within=2.0)

    async def reset(self) -> str:
        """Recover after an alarm or an emergency stop: soft reset (Ctrl-X), then unlock ($X).

        The unlock clears the alarm lock without homing, so the controller's idea of where the
        tool is may be wrong (a reset while moving loses steps): home before the next job.
        A link that is gone is opened again instead.
        """
        if self._job_running():
            raise MachineBusy("a program is running: cancel it (or stop the machine) first")
        link = self._link
        if link is None or not link.is_open or self._phase != "online":
            await self.close()
            await self.connect()
        else:
            await self.soft_reset()
        async with self._cmd_lock:
            lines = await self._command("$X", within=self.reply_timeout_s)
        if lines and lines[-1].startswith("error:"):
            code = int(lines[-1][6:])
            raise FirmwareError(f"GRBL refused to unlock ($X): {describe_error(code)}")
        await self._fresh_report(within=2.0)
        self._message = "reset and unlocked: the position is lost, home the machine ($H)"
        self._publish_state()
        return (
            "GRBL was reset (Ctrl-X) and unlocked ($X). The position is lost: home the "
            "machine ($H) before the next job"
        )

    def override_feed(self, delta: int) -> None:
        """Change the feed override by `delta` percent (steps of 10 and 1); 0 resets it."""
        self._write_rt(_override_bytes(
            delta, RT_FEED_OV_RESET, RT_FEED_OV_PLUS_10, RT_FEED_OV_MINUS_10,
            RT_FEED_OV_PLUS_1, RT_FEED_OV_MINUS_1,
        ))  # fmt: skip

    def override_spindle(self, delta: int) -> None:
        """Change the spindle override by `delta` percent (steps of 10 and 1); 0 resets it."""
        self._write_rt(_override_bytes(
            delta, RT_SPINDLE_OV_RESET, RT_SPINDLE_OV_PLUS_10, RT_SPINDLE_OV_MINUS_10,
            RT_SPINDLE_OV_PLUS_1, RT_SPINDLE_OV_MINUS_1,
        ))  # fmt: skip

    def override_rapid(self, percent: int) -> None:
        """Set the rapid override to 100, 50 or 25 percent."""
        try:
            self._write_rt(RT_RAPID_OV[percent])
        except KeyError:
            raise DriverError("GRBL's rapid override is 100, 50 or 25 percent") from None

    def jog_cancel(self) -> None:
        """Cancel a jog at once (0x85)."""
        self._write_rt(RT_JOG_CANCEL)

    # ---------------------------------------------------------------------------------
    # Programs

    def _line_problem(self, line: str) -> str | None:
        """Return why GRBL cannot take this line, or None."""
        if any(c in line for c in "?!~") or any(ord(c) < 0x20 or ord(c) > 0x7E for c in line):
            return "contains a real-time or non-ASCII character (? ! ~, control bytes)"
        if len(compact(line)) > MAX_LINE_CHARS:
            return f"is longer than GRBL's {MAX_LINE_CHARS}-character line buffer"
        if len(line) + 1 > self._cc.capacity:
            return f"does not fit GRBL's {RX_BUFFER_SIZE}-byte receive buffer"
        return None

    async def start(self, program: Program) -> None:
        """Start streaming a program (after a check-mode pass if `check_mode` is set)."""
        self._check_link()
        if self._job_running():
            raise MachineBusy("a program is already running")
        if self._critical or self._locked:
            _, message = self._machine_state()
            raise FirmwareError(f"the machine is {message}")
        problems = []
        for i, line in enumerate(program.lines):
            problem = self._line_problem(line)
            if problem:
                problems.append(f"line {i + 1} `{line[:40]}` {problem}")
        if problems:
            raise DriverError("the program cannot be sent to GRBL: " + "; ".join(problems[:10]))
        async with self._cmd_lock:
            if self._cc.pending():
                await self._wait_drained(within=self.reply_timeout_s)
            rep = await self._fresh_report(within=2.0)
            if rep is None:
                raise ProtocolError("GRBL does not answer status queries")
            if rep.base_state != "Idle":
                raise MachineBusy(f"the machine is in state {rep.state}; it must be Idle")
            if self.check_mode:
                await self._check_program(program)
            self._message = ""
            job = _Job(program=program)
            job.progress = Progress(lines_total=len(program.lines), started_at=time.time())
            self._job = job
            job.task = asyncio.create_task(self._run_job(job), name=f"grbl-job-{program.name}")
        self._emit(EventKind.STARTED, program=program.name, lines_total=len(program.lines))
        self._publish_state()

    async def _check_program(self, program: Program) -> None:
        """Validate the whole program in GRBL's check mode; raise if any line fails."""
        lines = await self._command("$C", within=5.0)
        if lines[-1] != "ok":
            raise FirmwareError(f"GRBL refused check mode ($C): {lines[-1]}")
        job = _Job(program=program, check_only=True)
        job.progress = Progress(lines_total=len(program.lines), started_at=time.time())
        self._job = job
        try:
            job.task = asyncio.current_task()
            # `$` commands are not G-code and GRBL refuses most of them in check mode.
            await self._stream(job, skip_system=True)
            await self._wait_drained(within=self.reply_timeout_s)
        finally:
            job.task = None
            self._job = None
        self._banner_event.clear()
        lines = await self._command("$C", within=5.0)
        if not await self._wait_banner(5.0):
            raise ProtocolError("GRBL did not restart after leaving check mode")
        await self._fresh_report(within=2.0)
        if job.failure is not None:
            raise DriverError(f"check mode was interrupted: {job.failure['reason']}")
        if job.errors:
            details = "; ".join(
                f"line {i + 1} `{text}`: {describe_error(code)}" for i, text, code in job.errors
            )
            raise DriverError(
                f"check mode found {len(job.errors)} error(s), nothing was run: {details}"
            )

    async def _stream(self, job: _Job, *, skip_system: bool = False) -> None:
        for index, line in enumerate(job.program.lines):
            if job.failure is not None or job.cancel_requested:
                raise _JobStop()
            if skip_system and line.lstrip().startswith("$"):
                job.acked += 1
                continue
            nbytes = len(line) + 1
            if is_eeprom_command(line) or line.lstrip().startswith("$"):
                # Sent alone: EEPROM writes stall GRBL's serial input, and `$` commands
                # need it idle (error:8 otherwise).
                await self._wait_drained(within=self.reply_timeout_s)
                if not job.check_only:
                    await self._wait_idle_in_job(job)
                homing = compact(line) == "$H"
                self._homing = homing  # GRBL ignores `?` while homing: no watchdog
                try:
                    self._send_line(line, index=index, want_future=False)
                    job.sent += 1
                    await self._wait_drained(within=self.reply_timeout_s)
                finally:
                    if homing:
                        self._homing = False
                        self._last_rx = time.monotonic()
                continue
            if self.streaming == "send-wait":
                await self._wait_drained(within=self.reply_timeout_s)
            else:
                await self._wait_space(job, nbytes)
            self._send_line(line, index=index, want_future=False)
            job.sent += 1

    async def _wait_space(self, job: _Job, nbytes: int) -> None:
        since = time.monotonic()
        while not self._cc.fits(nbytes):
            if job.failure is not None or job.cancel_requested:
                raise _JobStop()
            self._check_link()
            self._space.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._space.wait()
            extra = max((dwell_seconds(p.text) for p in self._cc.pending()), default=0.0)
            if self._reply_stalled(since, extra):
                raise self._stall_error()

    async def _wait_idle_in_job(self, job: _Job) -> None:
        while True:
            if job.failure is not None or job.cancel_requested:
                raise _JobStop()
            rep = await self._fresh_report(within=max(2.0, self.poll_interval_s * 5))
            if rep is not None and rep.base_state == "Idle":
                return
            if rep is None and time.monotonic() - self._last_rx > self.status_timeout_s:
                raise ProtocolError("GRBL stopped answering status queries")
            await asyncio.sleep(self.poll_interval_s)

    async def _wait_finished(self, job: _Job) -> None:
        """Wait until every line is answered and the machine is back to Idle."""
        await self._wait_drained(within=self.reply_timeout_s)
        idle_reports = 0
        seq = self._report_seq
        while True:
            if job.failure is not None or job.cancel_requested:
                raise _JobStop()
            self._check_link()
            ev = self._report_event
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await ev.wait()
            if self._report_seq == seq:
                continue
            seq = self._report_seq
            rep = self._report
            if rep is None or self._report_after_reply != self._reply_seq:
                continue
            if rep.base_state != "Idle":
                idle_reports = 0
                continue
            # GRBL can report Idle for an instant after the last `ok` before its cycle
            # starts; an empty planner (Bf) or a second Idle report rules that out.
            if rep.planner_free is not None and rep.planner_free >= self._planner_size:
                return
            idle_reports += 1
            if idle_reports >= 2:
                return

    async def _run_job(self, job: _Job) -> None:
        try:
            try:
                await self._stream(job)
                await self._wait_finished(job)
            except _JobStop:
                pass
            except (MachineOffline, ProtocolError) as exc:
                cause = "protocol" if isinstance(exc, ProtocolError) else "link"
                self._fail_job(
                    job, str(exc), needs_stop=isinstance(exc, ProtocolError), cause=cause
                )
            if job.failure is None and not job.cancel_requested:
                self._finish(job)
                return
            if job.emergency:
                # As Marlin (M112) and OctoPrint report it: the job failed, it did not end
                # as asked (the ALARM:3 the reset raises is its consequence, not the cause);
                # the supervisor names who pressed the stop.
                after = {k: v for k, v in (job.failure or {}).items() if k.startswith("last_")}
                self._end_job(job, EventKind.FAILED, reason="emergency stop", **after)
                return
            if job.cancel_requested and job.failure is None:
                await self._safe_stop()
                self._end_job(job, EventKind.CANCELLED, reason="cancelled by the operator")
                return
            failure = job.failure or {}
            if failure.get("needs_stop") and self._link is not None and self._link.is_open:
                # Lines already in GRBL's buffers would still run: stop the machine.
                with contextlib.suppress(DriverError):
                    await self._safe_stop()
            self._end_job(job, EventKind.FAILED, **failure)
        except asyncio.CancelledError:
            if job.failure is not None:
                self._end_job(job, EventKind.FAILED, **job.failure)
            raise
        except Exception as exc:  # a bug must not leave the job hanging
            log.exception("GRBL job task crashed")
            self._end_job(job, EventKind.FAILED, reason=f"internal error: {exc}")

    def _fail_job(self, job: _Job, reason: str, *, needs_stop: bool, **data: Any) -> None:
        if job.failure is not None:
            return
        last = job.last_acked_index
        job.failure = {
            "reason": reason,
            "needs_stop": needs_stop,
            "last_acked_line_number": None if last is None else last + 1,
            "last_acked_line": None if last is None else job.program.lines[last],
            **data,
        }
        self._space.set()

    def _finish(self, job: _Job) -> None:
        elapsed = time.monotonic() - job.started_mono
        self._message = f"finished {job.program.name} in {elapsed:.1f} s"
        self._end_job(job, EventKind.FINISHED, duration_s=round(elapsed, 3))

    def _end_job(self, job: _Job, event: EventKind, /, **data: Any) -> None:
        data.pop("needs_stop", None)
        if job.stop_alarm is not None:
            data.setdefault("stop_alarm", describe_alarm(job.stop_alarm))
        if event is EventKind.FAILED:
            self._message = f"failed: {data.get('reason', '')}"
        elif event is EventKind.CANCELLED:
            self._message = "cancelled"
        job.progress = Progress(
            lines_total=job.progress.lines_total,
            lines_sent=job.sent,
            lines_acked=job.acked,
            started_at=job.progress.started_at,
            last_line=job.progress.last_line,
        )
        if job.errors and not job.check_only:
            data.setdefault(
                "errors",
                [{"line_number": i + 1, "line": t, "code": c} for i, t, c in job.errors],
            )
        self._status = self._status.evolve(progress=job.progress)
        self._emit(event, program=job.program.name, **data)
        if self._job is job:
            self._job = None
        self._publish_state()

    async def _safe_stop(self) -> None:
        """Feed hold, wait for Hold:0 (motion stopped), then soft reset: no ALARM:3."""
        self._write_rt(RT_FEED_HOLD)
        rep = await self._wait_report(
            lambda r: r.state == "Hold:0" or r.base_state in ("Alarm", "Door"),
            within=self.hold_timeout_s,
        )
        if rep is None:
            log.warning(
                "GRBL did not reach Hold:0 in %.0f s; resetting anyway", self.hold_timeout_s
            )
        # A fresh report after the hold: Hold:0 seen before `!` was processed is stale.
        rep = await self._fresh_report(within=2.0)
        if rep is not None and rep.state == "Hold:1":
            await self._wait_report(lambda r: r.state != "Hold:1", within=self.hold_timeout_s)
        await self.soft_reset()

    async def pause(self) -> None:
        """Feed hold (!): motion decelerates and stops; streaming continues into the buffer."""
        job = self._job
        if not self._job_running() or job is None:
            raise DriverError("no program is running")
        self._write_rt(RT_FEED_HOLD)
        job.paused = True
        self._emit(EventKind.PAUSED, program=job.program.name)
        self._publish_state()

    async def resume(self) -> None:
        """Cycle start (~) after a feed hold."""
        job = self._job
        if not self._job_running() or job is None:
            raise DriverError("no program is running")
        # GRBL ignores `~` while the hold is still decelerating (Hold:1): send it once the
        # hold is complete, and again if a report shows it was not taken.
        deadline = time.monotonic() + self.hold_timeout_s
        while time.monotonic() < deadline:
            rep = await self._fresh_report(within=2.0)
            if rep is None:
                raise ProtocolError("GRBL does not answer status queries")
            if rep.state in ("Hold:0", "Door:0"):
                self._write_rt(RT_CYCLE_START)
            elif rep.base_state not in ("Hold", "Door"):
                break
        job.paused = False
        self._emit(EventKind.RESUMED, program=job.program.name)
        self._publish_state()

    async def cancel(self) -> None:
        """Stop the program safely: feed hold, wait for Hold:0, soft reset."""
        job = self._job
        if not self._job_running() or job is None or job.task is None:
            raise DriverError("no program is running")
        job.cancel_requested = True
        self._space.set()
        try:
            async with asyncio.timeout(self.hold_timeout_s + 15):
                await asyncio.shield(job.task)
        except TimeoutError:
            raise ProtocolError("the program did not stop; use the machine's stop button") from None

    async def emergency_stop(self) -> None:
        """Soft reset now (Ctrl-X): motion stops at once, position is lost (ALARM:3)."""
        self._banner_event.clear()
        self._write_rt(RT_SOFT_RESET)
        job = self._job
        if self._job_running() and job is not None and job.task is not None:
            job.emergency = True
            job.cancel_requested = True
            self._space.set()
        # Return once GRBL has restarted, so the status shows the alarm the reset raised.
        if not await self._wait_banner(5.0):
            raise ProtocolError("GRBL did not restart after the emergency stop; cut its power")
        await self._fresh_report(within=2.0)
        if job is not None and job.task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.shield(job.task)


def _override_bytes(
    delta: int, reset: bytes, plus10: bytes, minus10: bytes, plus1: bytes, minus1: bytes
) -> bytes:
    if delta == 0:
        return reset
    tens, ones = divmod(abs(delta), 10)
    if delta > 0:
        return plus10 * tens + plus1 * ones
    return minus10 * tens + minus1 * ones
