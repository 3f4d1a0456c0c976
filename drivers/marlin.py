"""Marlin over USB serial: numbered, checksummed lines streamed ahead within the buffers.

How a line travels: `_pump()` numbers it (`N<n> <cmd>*<xor>`), keeps it in `_history` and
in `_inflight` until the firmware's `ok` comes back. Up to `window` lines are in flight (or
the command slots the firmware reports through ADVANCED_OK); lines beyond the firmware's
command slots must also fit its 128-byte receive buffer, because real Marlin drops bytes
that do not fit. A `Resend: n` rewinds the send cursor to `n`; after a rewind only one line
is in flight until the firmware accepts it, so that the stale replies of lines sent before
the rewind cannot start a resend storm (see `_on_resend`).

Everything runs on the event loop: a reader task parses replies and calls `_pump()`, a
ticker task handles timeouts and temperature polls. No call blocks.
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
from enum import StrEnum
from typing import Any

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
    Status,
    Temperature,
    strip_comment,
)
from drivers.serial_io import AsyncSerialLink

log = logging.getLogger(__name__)

#: Commands that legitimately keep the firmware silent for minutes (homing, probing, heating,
#: waiting for moves, filament change, dwell, auto-tune, calibration).
LONG_COMMANDS = frozenset(
    {"G28", "G29", "M109", "M190", "M191", "M400", "M600", "G4", "M0", "M1", "M303", "G33", "G34"}
)

#: Commands send() accepts while a program runs: they are answered without disturbing it.
#: M105 and M114 go through the numbered stream like any line; M108 and M112 bypass it.
REALTIME_COMMANDS = frozenset({"M105", "M114", "M108", "M112"})


# ---------------------------------------------------------------------------------------
# Wire format and reply parsing (pure functions, unit-tested without a port)


def checksum(text: str) -> int:
    """Return Marlin's checksum: the XOR of every byte of the text."""
    value = 0
    for byte in text.encode("ascii", errors="replace"):
        value ^= byte
    return value


def format_line(number: int, command: str) -> str:
    """Return `N<number> <command>*<checksum>` as Marlin expects it (no newline)."""
    body = f"N{number} {command}"
    return f"{body}*{checksum(body)}"


def command_code(command: str) -> str:
    """Return the G/M/T code of a command in upper case (`g1 x1` -> `G1`, `M104.1` -> `M104`)."""
    match = re.match(r"\s*([A-Za-z])\s*(\d+)", command)
    if not match:
        return command.strip().split(" ", 1)[0].upper()
    return f"{match.group(1).upper()}{int(match.group(2))}"


class ReplyKind(StrEnum):
    """What one line from the firmware means to the host."""

    OK = "ok"
    RESEND = "resend"
    ERROR = "error"
    BUSY = "busy"
    WAIT = "wait"
    ACTION = "action"
    ECHO = "echo"
    TEMPERATURE = "temperature"  # an auto-report or a heating progress line
    POSITION = "position"  # an M114 report
    START = "start"  # the firmware (re)booted
    OTHER = "other"


class ErrorClass(StrEnum):
    """Kinds of `Error:` lines; only FATAL ones halt a job."""

    LINENO = "lineno"  # a line arrived out of sequence (often a stale line after a resend)
    CHECKSUM = "checksum"  # a line arrived corrupted
    FORMAT = "format"  # checksum or line number missing: the line was damaged
    FATAL = "fatal"  # thermal runaway, kill, MINTEMP, ...


@dataclass(frozen=True, slots=True)
class Reply:
    """One parsed line from the firmware."""

    kind: ReplyKind
    text: str
    number: int | None = None  # Resend: n, ok N<n>, Error "Last Line: n"
    planner_free: int | None = None  # ADVANCED_OK P
    slots_free: int | None = None  # ADVANCED_OK B
    temperatures: Mapping[str, Temperature] = field(default_factory=dict)
    position: Mapping[str, float] = field(default_factory=dict)
    error_class: ErrorClass | None = None
    got: int | None = None  # the line number the firmware received (VirtualPrinter says it)
    message: str = ""  # error text, echo text or action name and arguments


_TEMP_RE = re.compile(
    r"(?<![A-Za-z@])(T\d*|B|C)\s*:\s*(-?\d+(?:\.\d+)?)(?:\s*/\s*(-?\d+(?:\.\d+)?))?"
)
_POS_RE = re.compile(r"(?<![A-Za-z])([XYZE])\s*:\s*(-?\d+(?:\.\d+)?)")
_OK_N_RE = re.compile(r"(?:^|\s)N(\d+)(?=\s|$)")
_OK_P_RE = re.compile(r"(?:^|\s)P(\d+)(?=\s|$)")
_OK_B_RE = re.compile(r"(?:^|\s)B(\d+)(?=\s|$)")
_RESEND_RE = re.compile(r"^(?:resend|rs)\s*:?\s*N?\s*(\d+)", re.IGNORECASE)
_LAST_LINE_RE = re.compile(r"Last Line:\s*(-?\d+)", re.IGNORECASE)
_EXPECTED_GOT_RE = re.compile(r"expected line (\d+) got (\d+)", re.IGNORECASE)
_FIRMWARE_NAME_RE = re.compile(r"FIRMWARE_NAME:\s*(.*?)(?:\s+[A-Z_]+:|$)")
_CAP_RE = re.compile(r"^Cap:([A-Z0-9_]+):(\d)")


def parse_temperatures(text: str) -> dict[str, Temperature]:
    """Parse `T:210.0 /210.0 B:60 /60 T0:...` into heaters (actual, target)."""
    temps: dict[str, Temperature] = {}
    for name, actual, target in _TEMP_RE.findall(text):
        temps[name] = Temperature(float(actual), float(target) if target else None)
    return temps


def parse_position(text: str) -> dict[str, float]:
    """Parse an M114 report `X:1.00 Y:2.00 Z:0.30 E:0.00 Count X:...` (stepper counts dropped)."""
    head = text.split("Count", 1)[0]
    return {axis: float(value) for axis, value in _POS_RE.findall(head)}


def classify_error(message: str) -> ErrorClass:
    """Tell a resend-related `Error:` from a firmware fault, in Marlin's and others' words."""
    low = message.lower()
    if "line number is not last line number" in low or "expected line" in low:
        return ErrorClass.LINENO
    if "checksum mismatch" in low or "wrong checksum" in low:
        return ErrorClass.CHECKSUM
    if (
        "no checksum" in low
        or "missing checksum" in low
        or "no line number" in low
        or "format error" in low
    ):
        return ErrorClass.FORMAT
    return ErrorClass.FATAL


def parse_reply(line: str) -> Reply:
    """Parse one line from a Marlin-like firmware."""
    text = line.strip()
    low = text.lower()
    if low == "ok" or low.startswith(("ok ", "ok:")):
        rest = text[2:].lstrip(" :")
        n = _OK_N_RE.search(rest)
        p = _OK_P_RE.search(rest)
        b = _OK_B_RE.search(rest)
        position = parse_position(rest) if rest.startswith("X:") else {}
        return Reply(
            ReplyKind.OK,
            text,
            number=int(n.group(1)) if n else None,
            planner_free=int(p.group(1)) if p else None,
            slots_free=int(b.group(1)) if b else None,
            temperatures=parse_temperatures(rest) if "T" in rest and not position else {},
            position=position,
        )
    resend = _RESEND_RE.match(text)
    if resend:
        return Reply(ReplyKind.RESEND, text, number=int(resend.group(1)))
    if low.startswith("error:") or low.startswith("!!"):
        message = text[6:].strip() if low.startswith("error:") else text[2:].strip()
        last = _LAST_LINE_RE.search(message)
        number = int(last.group(1)) if last else None
        got = None
        expected_got = _EXPECTED_GOT_RE.search(message)
        if expected_got:
            number, got = int(expected_got.group(1)) - 1, int(expected_got.group(2))
        error_class = classify_error(message) if low.startswith("error:") else ErrorClass.FATAL
        return Reply(
            ReplyKind.ERROR,
            text,
            number=number,
            error_class=error_class,
            got=got,
            message=message,
        )
    if low.startswith(("busy:", "echo:busy")):
        return Reply(ReplyKind.BUSY, text, message=text)
    if low == "wait":
        return Reply(ReplyKind.WAIT, text)
    if text.startswith("//action:"):
        return Reply(ReplyKind.ACTION, text, message=text[len("//action:") :].strip())
    if low.startswith("echo:"):
        return Reply(ReplyKind.ECHO, text, message=text[5:].strip())
    if low == "start":
        return Reply(ReplyKind.START, text)
    if text.startswith("X:") and "Y:" in text:
        return Reply(ReplyKind.POSITION, text, position=parse_position(text))
    temps = parse_temperatures(text) if re.match(r"(T\d*|B|C)\s*:", text) else {}
    if temps:
        return Reply(ReplyKind.TEMPERATURE, text, temperatures=temps)
    return Reply(ReplyKind.OTHER, text, message=text)


# Splitting messages that a peer glued together without newlines. Real Marlin ends every
# line with "\n"; OctoPrint's VirtualPrinter hands out many replies without one ("ok",
# "wait", "Resend:5", "Error: ..."), so on a byte stream they run together:
# "Error: Checksum mismatchResend:5ok". These patterns never occur inside one real Marlin
# line, so splitting at them is safe.
_GLUE_START_RE = re.compile(r"(?<=\S)(?=Resend:|Error:|Cap:|//action:|FIRMWARE_NAME:)")
_GLUE_LEAD_RE = re.compile(
    r"^(ok|wait)(?=ok|wait|echo:|busy|T\d*:|B:|X:|start|Resend|Error|Cap:|//|FIRMWARE_NAME)"
)
_ENDS_WITH_TOKEN = re.compile(rb"(?:^|ok|wait|\d|\S:\d)(?:ok|wait)$")
_GLUE_HEAD_RE = re.compile(r"^(Resend:\s*\d+|Cap:[A-Z0-9_]+:\d)(?=[^\d\s])")


def split_replies(text: str) -> list[str]:
    """Split one received line into the firmware messages glued together in it."""
    out: list[str] = []
    for part in _GLUE_START_RE.split(text):
        while part:
            lead = _GLUE_LEAD_RE.match(part) or _GLUE_HEAD_RE.match(part)
            if not lead:
                break
            out.append(lead.group(1))
            part = part[lead.end() :]
        if part:
            out.append(part)
    return out


# ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Waiter:
    """A send() caller waiting for the reply lines of its command."""

    future: asyncio.Future[list[str]]
    lines: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Line:
    """One command on its way to the firmware."""

    command: str
    number: int | None = None  # None: sent unnumbered (M108, M112)
    wire: bytes = b""
    long: bool = False
    job_index: int | None = None  # index in the program, for progress
    waiter: _Waiter | None = None
    is_poll: bool = False  # an M105 the driver sent itself
    acked: bool = False


@dataclass(slots=True)
class _Job:
    program: Program
    started_at: float
    next_index: int = 0  # next program line to number and send
    acked: int = 0
    last_acked: str | None = None
    first_number: int | None = None
    last_number: int | None = None  # number of the program's last line once sent
    paused: bool = False
    cancelling: bool = False


class MarlinDriver(Driver):
    """A Marlin printer on a serial port: send-ahead streaming with resends and checksums."""

    name = "marlin"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        s = self.settings
        # Marlin's default BUFSIZE is 4 command slots; 4 lines in flight never spill into
        # the 128-byte receive buffer. Measured on VirtualPrinter (docs/bench-marlin.md):
        # window 4 streams short segments several times faster than one line in flight.
        self.window = max(1, int(s.get("window", 4)))
        self.buffer_slots = max(1, int(s.get("buffer_slots", 4)))
        self.rx_buffer = int(s.get("rx_buffer", 128))
        self.timeout_s = float(s.get("timeout_s", 30.0))
        self.long_timeout_s = float(s.get("long_timeout_s", 900.0))
        self.connect_timeout_s = float(s.get("connect_timeout_s", 10.0))
        self.poll_interval_s = float(s.get("poll_interval_s", 2.0))
        self.poll_interval_job_s = float(s.get("poll_interval_job_s", 5.0))
        self.autoreport_interval_s = int(s.get("autoreport_interval_s", 2))
        self.max_resends = int(s.get("max_resends", 10))
        # A resent line that gets no reply at all within this time is sent again: covers a
        # resent line lost on the link after the firmware flushed its receive buffer.
        self.resend_probe_s = float(s.get("resend_probe_s", 2.0))
        # No ok for this long (short of the timeout): send an M105 beyond the window.
        self.stall_probe_s = float(s.get("stall_probe_s", 5.0))
        # Bytes after the last newline are taken as a line once the peer has been quiet this
        # long (peers such as VirtualPrinter do not end every reply with a newline).
        self.partial_line_s = float(s.get("partial_line_s", 0.05))
        # After a resend request, wait until the firmware has been quiet this long before
        # resending: Marlin flushes its receive buffer on an error, and a line cut by that
        # flush arrives as junk and triggers another error. 2 lines of 96 bytes at 115200
        # baud take 17 ms.
        baud = int(s.get("baudrate", 115200)) or 115200
        self.resend_settle_s = float(s.get("resend_settle_s", max(0.02, 2 * 96 * 10 / baud)))
        self._link: AsyncSerialLink | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._ticker_task: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._trace = False
        self._reset_protocol_state()

    # -- state ----------------------------------------------------------------------------

    def _reset_protocol_state(self) -> None:
        self._handshake_q: asyncio.Queue[Reply] | None = None
        self._history: dict[int, _Line] = {}
        self._inflight: deque[_Line] = deque()
        self._pending: deque[_Line] = deque()  # commands waiting to be numbered and sent
        self._next_n = 0  # next fresh line number
        self._cursor = 0  # next line number to transmit (< _next_n while resending)
        self._job: _Job | None = None
        self._halted: str | None = None  # a firmware fault: send nothing more
        self.capabilities: dict[str, bool] = {}
        self._advanced_ok = False
        self._learned_slots: int | None = None
        # resend bookkeeping
        self._rewind_n: int | None = None  # line we rewound to; only one line in flight
        self._stale_budget = 0  # replies still expected from lines sent before the rewind
        self._streak_n: int | None = None
        self._streak = 0
        self._error_rewound: int | None = None  # rewound on an Error line; its Resend follows
        self._last_error_class: ErrorClass | None = None
        self._paired_ok = False  # the ok right after "Resend:" belongs to the rejected line
        self._junk_ok = False  # the ok of a cut line tail the firmware ran as a command
        self._loose_newlines = False  # the peer glues replies together (VirtualPrinter)
        self._settling = False  # after a rewind: waiting for stale replies to stop
        self._sent_since_rewind: set[int] = set()
        self._settle_handle: asyncio.TimerHandle | None = None
        now = time.monotonic()
        self._last_progress = now
        self._job_progress_at = now
        self._last_rx = now
        self._last_poll = now
        self._last_probe = 0.0
        self._last_publish = 0.0
        self.stats = {"resends": 0, "stale_resends": 0, "probes": 0, "lines_sent": 0}

    @property
    def connected(self) -> bool:
        """Return whether the link is open and the handshake is done."""
        return self._link is not None and self._link.is_open and self._handshake_q is None

    async def status(self) -> Status:
        """Return the latest status snapshot with up-to-date progress."""
        if self._job is not None:
            return self._status.evolve(progress=self._progress(), updated_at=time.time())
        return self._status

    def _progress(self) -> Progress | None:
        job = self._job
        if job is None:
            return self._status.progress
        return Progress(
            lines_total=len(job.program.lines),
            lines_sent=job.next_index,
            lines_acked=job.acked,
            started_at=job.started_at,
            last_line=job.last_acked,
        )

    # -- connect and close ----------------------------------------------------------------

    async def connect(self) -> None:
        """Open the port, reset line numbers (M110), read capabilities (M115), set reporting."""
        if self.connected:
            return
        port = self.settings.get("port")
        if not port:
            raise DriverError("the marlin driver needs a 'port' setting, e.g. /dev/ttyUSB0")
        baudrate = int(self.settings.get("baudrate", 115200))
        await self._teardown()
        self._reset_protocol_state()
        self._trace = log.isEnabledFor(logging.DEBUG)  # a wire trace, line by line
        self._set_status(state=MachineState.CONNECTING, message=f"connecting to {port}")
        link = AsyncSerialLink(str(port), baudrate)
        try:
            await link.open()
        except MachineOffline as exc:
            self._set_status(state=MachineState.OFFLINE, message=str(exc))
            raise
        self._link = link
        self._handshake_q = asyncio.Queue()
        self._reader_task = asyncio.create_task(self._read_loop(link), name=f"marlin-rx {port}")
        try:
            await self._handshake(str(port), baudrate)
        except BaseException as exc:
            await self._teardown()
            self._set_status(state=MachineState.OFFLINE, message=str(exc))
            raise
        self._handshake_q = None
        self._ticker_task = asyncio.create_task(self._tick_loop(), name=f"marlin-tick {port}")
        self._set_status(state=MachineState.IDLE, message="connected")
        log.info(
            "marlin %s connected: %s, capabilities %s",
            port,
            self._status.firmware,
            ",".join(k for k, v in sorted(self.capabilities.items()) if v),
        )

    async def _hs_reply(self, until: float) -> Reply:
        assert self._handshake_q is not None
        remaining = until - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise TimeoutError
        return await asyncio.wait_for(self._handshake_q.get(), remaining)

    def _hs_write(self, number: int, command: str) -> None:
        assert self._link is not None
        self._link.write((format_line(number, command) + "\n").encode("ascii"))

    async def _handshake(self, port: str, baudrate: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout_s
        # 1. M110 N0 until a clean ok: a board that resets when the port opens (Arduino
        # auto-reset) ignores us for 1-3 s while it boots, so retry every 2 s. A leading
        # newline ends any junk left in the firmware's buffer.
        while True:
            assert self._link is not None
            self._link.write(b"\n")
            self._hs_write(0, "M110 N0")
            attempt_end = min(deadline, loop.time() + 2.0)
            clean, got_ok = True, False
            with contextlib.suppress(TimeoutError):
                while not got_ok:
                    reply = await self._hs_reply(attempt_end)
                    if reply.kind in (ReplyKind.RESEND, ReplyKind.ERROR):
                        clean = False  # junk before our line; it may not have been taken
                    got_ok = reply.kind is ReplyKind.OK
            if got_ok and clean:
                break
            if loop.time() >= deadline:
                raise MachineOffline(
                    f"no answer from a Marlin printer on {port} at {baudrate} baud within "
                    f"{self.connect_timeout_s:.0f} s: check that it is powered on, the port "
                    "is right and the baud rate matches the firmware (115200 or 250000)"
                )
            await asyncio.sleep(0.1)
        # 2. M115: firmware name and capabilities. Late oks of earlier M110 attempts may
        # still arrive, so wait for the ok that follows FIRMWARE_NAME (or give up on the name
        # 1 s after an ok: firmware without M115 answers just "ok").
        self._hs_write(1, "M115")
        firmware: str | None = None
        ok_seen_at: float | None = None
        m115_end = loop.time() + 5.0
        while True:
            until = m115_end if ok_seen_at is None else min(m115_end, ok_seen_at + 1.0)
            try:
                reply = await self._hs_reply(until)
            except TimeoutError:
                if ok_seen_at is not None:
                    break
                raise ProtocolError(
                    f"the printer on {port} answered M110 but not M115 within 5 s"
                ) from None
            name = _FIRMWARE_NAME_RE.search(reply.text)
            cap = _CAP_RE.match(reply.text)
            if name:
                firmware = name.group(1).strip()
            elif cap:
                self.capabilities[cap.group(1)] = cap.group(2) == "1"
            elif reply.kind is ReplyKind.OK:
                if firmware is not None:
                    break
                ok_seen_at = loop.time()
        self._advanced_ok = self.capabilities.get("ADVANCED_OK", False)
        self._next_n = self._cursor = 2
        # 3. Temperature reports: the firmware pushes them (M155) or we poll M105.
        if self.capabilities.get("AUTOREPORT_TEMP"):
            self._hs_write(2, f"M155 S{self.autoreport_interval_s}")
            end = loop.time() + 5.0
            while (await self._hs_reply(end)).kind is not ReplyKind.OK:
                pass
            self._next_n = self._cursor = 3
        self._set_status(
            firmware=firmware,
            extra={
                "port": port,
                "baudrate": baudrate,
                "capabilities": dict(self.capabilities),
                "autoreport_temp": bool(self.capabilities.get("AUTOREPORT_TEMP")),
            },
        )

    async def close(self) -> None:
        """Close the link; a running program is reported FAILED. Safe to call twice."""
        if self._job is not None:
            self._end_job(EventKind.FAILED, "the connection was closed by the host")
        self._fail_waiters(MachineOffline("the connection was closed"))
        await self._teardown()
        if self._status.state is not MachineState.OFFLINE:
            self._set_status(state=MachineState.OFFLINE, message="closed")

    async def _teardown(self) -> None:
        tasks = [t for t in (self._ticker_task, self._reader_task) if t is not None]
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        for task in tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, 2.0)
        self._ticker_task = self._reader_task = None
        if self._link is not None:
            self._link.close()
            self._link = None

    # -- program control ------------------------------------------------------------------

    def _require_ready(self) -> None:
        if self._halted is not None:
            raise FirmwareError(
                f"the printer is halted ({self._halted}); reset it and reconnect before "
                "sending anything"
            )
        if not self.connected:
            raise MachineOffline("the printer is not connected")

    async def start(self, program: Program) -> None:
        """Start streaming a program in the background; returns once it is under way."""
        self._require_ready()
        if self._job is not None:
            raise MachineBusy(f"program {self._job.program.name!r} is already running")
        if not program.lines:
            raise DriverError(f"program {program.name!r} has no G-code lines")
        self._job = _Job(program=program, started_at=time.time())
        self._last_progress = self._job_progress_at = time.monotonic()
        self._set_status(
            state=MachineState.RUNNING, message=program.name, progress=self._progress()
        )
        self._emit(EventKind.STARTED, program=program.name, lines_total=len(program.lines))
        self._pump()

    async def pause(self) -> None:
        """Stop feeding program lines (lines already in the firmware still run)."""
        job = self._require_job()
        if job.paused:
            return
        job.paused = True
        self._set_status(state=MachineState.PAUSED, progress=self._progress())
        self._emit(EventKind.PAUSED, program=job.program.name)

    async def resume(self) -> None:
        """Feed program lines again after a pause."""
        job = self._require_job()
        if not job.paused:
            return
        self._require_ready()
        job.paused = False
        self._job_progress_at = time.monotonic()
        self._set_status(state=MachineState.RUNNING, progress=self._progress())
        self._emit(EventKind.RESUMED, program=job.program.name)
        self._pump()

    def _require_job(self) -> _Job:
        if self._job is None or self._job.cancelling:
            raise DriverError("no program is running")
        return self._job

    async def cancel(self) -> None:
        """Stop feeding, break a heating wait (M108), switch heaters and fan off, emit CANCELLED."""
        job = self._require_job()
        job.cancelling = True
        job.paused = True
        stop: list[_Line] = []
        if self.connected and self._halted is None:
            # M108 unnumbered and at once: the firmware's emergency parser acts on it even
            # while M109/M190 block the command queue.
            self._transmit_unnumbered("M108")
            for command in ("M104 S0", "M140 S0", "M107"):
                line = _Line(command=command, waiter=_Waiter(self._new_future()))
                self._pending.append(line)
                stop.append(line)
            self._pump()
        for line in stop:
            assert line.waiter is not None
            with contextlib.suppress(DriverError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(line.waiter.future), self.timeout_s)
        if self._job is job:
            self._end_job(EventKind.CANCELLED, "cancelled by the operator")

    async def emergency_stop(self) -> None:
        """Send M112 at once, unnumbered, ahead of everything; the printer needs a reset."""
        if self._link is None or not self._link.is_open:
            raise MachineOffline("the printer is not connected: use its own stop button")
        self._link.write(b"M112\n")
        reason = "emergency stop (M112): the printer is halted; reset it and reconnect"
        self._halt(reason)

    async def send(self, command: str) -> list[str]:
        """Send one command and return its reply lines up to and including the `ok`.

        While a program is loaded only M105, M114, M108 and M112 are accepted.
        """
        command = strip_comment(command)
        if not command:
            return []
        code = command_code(command)
        if code == "M112":
            await self.emergency_stop()
            return []
        self._require_ready()
        if code == "M110":
            raise DriverError("M110 is sent by the driver itself: it manages line numbers")
        if self._job is not None and code not in REALTIME_COMMANDS:
            raise MachineBusy(
                f"program {self._job.program.name!r} is running: only "
                f"{', '.join(sorted(REALTIME_COMMANDS))} can be sent now; pause is not enough, "
                "cancel the program first"
            )
        if code == "M108":
            self._transmit_unnumbered("M108")
            return []
        long = code in LONG_COMMANDS
        limit = self.long_timeout_s if long else self.timeout_s
        async with self._send_lock:
            waiter = _Waiter(self._new_future())
            self._pending.append(_Line(command=command, long=long, waiter=waiter))
            self._pump()
            # Wait as long as the firmware shows signs of life (ok, busy:, resends); the
            # ticker fails the link after `limit` s of silence, this is the backstop.
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(waiter.future), 0.5)
                except TimeoutError:
                    silent = time.monotonic() - self._last_progress
                    if silent > limit + 1.0:
                        raise ProtocolError(
                            f"no 'ok' for {command!r}: the printer was silent for {silent:.0f} s"
                        ) from None

    def _new_future(self) -> asyncio.Future[list[str]]:
        return asyncio.get_running_loop().create_future()

    # -- sending --------------------------------------------------------------------------

    def _slots(self) -> int:
        if self._learned_slots is not None:
            return self._learned_slots
        return self.buffer_slots

    def _limit(self) -> int:
        if self._learned_slots is not None:
            return max(self.window, self._learned_slots)
        return self.window

    def _may_send(self, wire_len: int) -> bool:
        if self._settling:
            return False
        if self._rewind_n is not None:
            # Recovering from a resend: one line past the rewind point at a time.
            return not any(
                e.number is not None and e.number >= self._rewind_n for e in self._inflight
            )
        n = len(self._inflight)
        if n >= self._limit():
            return False
        slots = self._slots()
        if n >= slots:
            # Lines beyond the command slots wait in the 128-byte receive buffer; real
            # Marlin drops the bytes that do not fit.
            spill = sum(len(e.wire) for e in list(self._inflight)[slots:])
            if spill + wire_len > self.rx_buffer - 1:
                return False
        return True

    def _next_fresh(self) -> _Line | None:
        if self._pending:
            return self._pending[0]
        job = self._job
        if job is None or job.paused or job.next_index >= len(job.program.lines):
            return None
        index = job.next_index
        command = job.program.lines[index]
        return _Line(command=command, long=command_code(command) in LONG_COMMANDS, job_index=index)

    def _pump(self) -> None:
        """Send every line the firmware's buffers have room for, strictly in order."""
        link = self._link
        if link is None or not link.is_open or self._halted is not None:
            return
        if self._handshake_q is not None:
            return
        try:
            while True:
                if self._cursor < self._next_n:
                    line = self._history.get(self._cursor)
                    if line is None:
                        self._protocol_failure(
                            f"the firmware asked for line {self._cursor}, which is no longer "
                            "in the resend history"
                        )
                        return
                    if not self._may_send(len(line.wire)):
                        return
                    self._transmit(line)
                    self._cursor += 1
                    continue
                line = self._next_fresh()
                if line is None:
                    return
                wire = (format_line(self._next_n, line.command) + "\n").encode("ascii", "replace")
                if not self._may_send(len(wire)):
                    return
                if self._pending and line is self._pending[0]:
                    self._pending.popleft()
                elif self._job is not None and line.job_index is not None:
                    job = self._job
                    job.next_index += 1
                    if job.first_number is None:
                        job.first_number = self._next_n
                    if job.next_index == len(job.program.lines):
                        job.last_number = self._next_n
                self._send_fresh(line, wire)
        except MachineOffline as exc:
            self._on_link_lost(str(exc))

    def _send_fresh(self, line: _Line, wire: bytes | None = None) -> None:
        """Number a line, keep it for resends and write it."""
        number = self._next_n
        line.number = number
        line.wire = wire or (format_line(number, line.command) + "\n").encode("ascii", "replace")
        self._history[number] = line
        self._next_n += 1
        self._cursor = self._next_n
        self._transmit(line)

    def _transmit(self, line: _Line) -> None:
        assert self._link is not None
        if not self._inflight:
            self._last_progress = time.monotonic()  # the reply clock starts now
        if self._trace:
            log.debug("marlin -> %s", line.wire)
        self._link.write(line.wire)
        self._inflight.append(line)
        self.stats["lines_sent"] += 1
        if self._rewind_n is not None and line.number is not None:
            self._sent_since_rewind.add(line.number)

    def _transmit_unnumbered(self, command: str) -> None:
        """Send a command at once, ahead of the window (M108); its ok is still counted."""
        if self._link is None or not self._link.is_open:
            return
        line = _Line(command=command, wire=(command + "\n").encode("ascii"))
        try:
            self._link.write(line.wire)
        except MachineOffline as exc:
            self._on_link_lost(str(exc))
            return
        self._inflight.append(line)

    # -- receiving ------------------------------------------------------------------------

    async def _read_loop(self, link: AsyncSerialLink) -> None:
        partial_seen = b""
        partial_since = 0.0
        try:
            while True:
                if self._loose_newlines:
                    wait = 0.005  # the peer leaves replies unterminated: look often
                else:
                    wait = self.partial_line_s if link.pending_partial() else 1.0
                try:
                    text = await link.readline(wait)
                except TimeoutError:
                    partial = link.pending_partial()
                    if not partial:
                        continue
                    now = time.monotonic()
                    if partial != partial_seen:
                        partial_seen, partial_since = partial, now
                    # A peer known to drop newlines ends a reply with a bare "ok" or "wait":
                    # take it at once. Anything else waits until the peer has been quiet.
                    whole = self._loose_newlines and _ENDS_WITH_TOKEN.search(partial)
                    if not whole and now - partial_since < self.partial_line_s:
                        continue
                    text = link.take_partial().decode("utf-8", errors="replace")
                    partial_seen = b""
                    self._note_loose_newlines(text)
                pieces = split_replies(text)
                if len(pieces) > 1:
                    self._note_loose_newlines(text)
                for piece in pieces:
                    if piece.strip():
                        self._on_line(piece)
        except MachineOffline as exc:
            self._on_link_lost(str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not leave a job hanging silently
            log.exception("marlin reader failed")
            self._on_link_lost(f"internal error in the Marlin driver: {exc!r}")

    def _note_loose_newlines(self, text: str) -> None:
        if not self._loose_newlines:
            self._loose_newlines = True
            log.info("marlin: the firmware ends replies without newlines (%r); coping", text)

    def _on_line(self, text: str) -> None:
        reply = parse_reply(text)
        if self._trace:
            log.debug("marlin <- %s", text)
        now = time.monotonic()
        self._last_rx = now
        if self._settling:
            self._schedule_settle()
        if reply.temperatures:
            self._update_temperatures(reply.temperatures)
        if reply.position:
            self._set_status(position=dict(reply.position))
        if self._handshake_q is not None:
            self._handshake_q.put_nowait(reply)
            return
        if reply.kind is not ReplyKind.RESEND and reply.kind is not ReplyKind.ERROR:
            self._error_rewound = None
        kind = reply.kind
        if kind is ReplyKind.OK:
            self._on_ok(reply)
        elif kind is ReplyKind.RESEND:
            assert reply.number is not None
            self._on_resend_line(reply.number)
        elif kind is ReplyKind.ERROR:
            self._on_error(reply)
        elif kind is ReplyKind.BUSY:
            self._last_progress = now
        elif kind is ReplyKind.WAIT:
            pass  # an idle firmware's heartbeat: never an acknowledgement
        elif kind is ReplyKind.ACTION:
            self._on_action(reply.message)
        elif kind is ReplyKind.TEMPERATURE:
            if any(e.long for e in self._inflight):
                self._last_progress = now  # heating progress during M109/M190
        elif kind is ReplyKind.START:
            self._on_firmware_restart()
        else:
            if kind is ReplyKind.ECHO:
                self._emit(EventKind.LOG, line=reply.text)
                junk = re.match(r'Unknown command:\s*"([^"]*)"', reply.message)
                if junk and not re.match(r"\s*[GMTgmt]\d", junk.group(1)):
                    self._junk_ok = True  # not a command we sent: a cut line's tail
            self._collect(reply.text)
        if kind in (ReplyKind.POSITION, ReplyKind.OTHER):
            self._emit(EventKind.LOG, line=reply.text)

    def _collect(self, text: str) -> None:
        if self._inflight and self._inflight[0].waiter is not None:
            self._inflight[0].waiter.lines.append(text)

    def _update_temperatures(self, temps: Mapping[str, Temperature]) -> None:
        merged = dict(self._status.temperatures)
        merged.update(temps)
        self._set_status(temperatures=merged)

    def _on_ok(self, reply: Reply) -> None:
        self._last_progress = time.monotonic()
        if reply.slots_free is not None:
            # ADVANCED_OK reports free slots while the acknowledged command still holds
            # one, so the buffer has B + 1 slots (an idle Marlin with BUFSIZE 4 says B3).
            slots = min(64, reply.slots_free + 1)
            if self._learned_slots is None or slots > self._learned_slots:
                self._learned_slots = slots
        if self._paired_ok or self._junk_ok:
            # The ok after "Resend:" answers the rejected line, already taken out of flight;
            # the ok after a junk "Unknown command" answers no line of ours.
            self._paired_ok = self._junk_ok = False
            self._pump()
            return
        numbered = [e.number for e in self._inflight if e.number is not None]
        if reply.number is not None and reply.number in numbered:
            # ADVANCED_OK names the acknowledged line: everything before it is done too.
            self._ack_through(lambda e: e.number == reply.number, reply.text)
        elif reply.number is not None and numbered and reply.number < numbered[0]:
            pass  # an ok for a line already accounted for
        elif reply.temperatures and any(e.is_poll or _is_m105(e) for e in self._inflight):
            # "ok T:..." answers an M105: everything sent before it is done too. This
            # resynchronises the count if an ok was ever lost on the link.
            self._ack_through(lambda e: e.is_poll or _is_m105(e), reply.text)
        elif self._inflight:
            self._ack_through(lambda e: True, reply.text)
        self._maybe_finish()
        self._pump()

    def _ack_through(self, is_last: Callable[[_Line], bool], ok_text: str) -> None:
        while self._inflight:
            line = self._inflight.popleft()
            last = is_last(line)
            self._complete(line, ok_text if last else "ok")
            if last:
                return

    def _complete(self, line: _Line, ok_text: str) -> None:
        if line.number is not None:
            if self._rewind_n is not None and line.number >= self._rewind_n:
                self._rewind_n = None  # the resent line went through: full window again
                self._stale_budget = 0
            if self._streak_n is not None and line.number > self._streak_n:
                self._streak_n, self._streak = None, 0
            # Keep a tail of acknowledged lines: a miscounted ok must still be resendable.
            self._history.pop(line.number - 256, None)
        if line.acked:
            return  # sent again after a rewind; counted the first time
        line.acked = True
        if line.is_poll:
            self._last_poll = time.monotonic()
        job = self._job
        if job is not None and line.job_index is not None:
            self._job_progress_at = time.monotonic()
            job.acked += 1
            job.last_acked = line.command
            now = time.monotonic()
            if now - self._last_publish >= 0.5:
                self._last_publish = now
                self._set_status(progress=self._progress())
        if line.waiter is not None and not line.waiter.future.done():
            line.waiter.lines.append(ok_text)
            line.waiter.future.set_result(list(line.waiter.lines))

    def _maybe_finish(self) -> None:
        job = self._job
        if job is None or job.cancelling or job.last_number is None:
            return
        if self._cursor < self._next_n or self._rewind_n is not None:
            return
        if any(e.job_index is not None for e in self._inflight):
            return
        if job.acked >= len(job.program.lines):
            self._end_job(EventKind.FINISHED, "finished")

    def _end_job(self, kind: EventKind, reason: str) -> None:
        job = self._job
        if job is None:
            return
        progress = self._progress()
        self._job = None
        data: dict[str, Any] = {
            "program": job.program.name,
            "reason": reason,
            "lines_acked": job.acked,
            "last_line": job.last_acked,
            "elapsed_s": round(time.time() - job.started_at, 3),
        }
        if kind is EventKind.FINISHED or kind is EventKind.CANCELLED:
            state = MachineState.IDLE if self._halted is None else MachineState.ERROR
            self._set_status(state=state, message=reason, progress=progress)
        else:
            self._set_status(progress=progress)
        self._emit(kind, **data)

    # -- resends --------------------------------------------------------------------------

    def _on_error(self, reply: Reply) -> None:
        error_class = reply.error_class or ErrorClass.FATAL
        if error_class is ErrorClass.FATAL:
            self._emit(EventKind.LOG, line=reply.text)
            self._halt(f"firmware error: {reply.message}")
            return
        self._last_error_class = error_class
        if reply.number is not None and reply.got is not None:
            wanted = reply.number + 1
            if self._stale_copy(reply.got, wanted):
                self.stats["stale_resends"] += 1
                self._error_rewound = wanted  # the "Resend:" that follows is handled
                self._pump()
                return
        if reply.number is not None:
            # Marlin names the last good line; a "Resend:" for the next one follows. Rewind
            # now: some firmware (and VirtualPrinter's missing_lineno) never sends it.
            wanted = reply.number + 1
            self._resend(wanted, error_class)
            self._error_rewound = wanted

    def _stale_copy(self, got: int, wanted: int) -> bool:
        """Tell from "expected line X got Y" whether Y was a copy that needs no rewind."""
        if got < wanted:
            # A second copy of a line the firmware already has: forget that copy.
            for line in self._inflight:
                if line.number == got:
                    self._inflight.remove(line)
                    break
            if self._rewind_n is not None and wanted > self._rewind_n:
                self._rewind_n = None  # the firmware has the resent line
                self._settling = False
            self._cursor = max(self._cursor, min(wanted, self._next_n))
            return self._cursor >= wanted
        # A line sent before the last rewind, arriving out of sequence.
        return self._rewind_n == wanted and got not in self._sent_since_rewind

    def _on_resend_line(self, number: int) -> None:
        self._paired_ok = True
        if self._error_rewound == number:
            self._error_rewound = None  # the Error line before it did the rewind
            self._last_error_class = None
            return
        self._error_rewound = None
        error_class = self._last_error_class or ErrorClass.CHECKSUM
        self._last_error_class = None
        self._resend(number, error_class)

    def _resend(self, number: int, error_class: ErrorClass) -> None:
        """Rewind to `number`, unless this is a stale request from a line sent before."""
        self._last_progress = time.monotonic()
        if self._halted is not None:
            return
        if number >= self._next_n:
            if number == self._next_n:
                # The firmware has every line we sent: a duplicate caused a stale request.
                self._drop_inflight_from(number)
                self.stats["stale_resends"] += 1
                return
            self._protocol_failure(
                f"the firmware asked to resend line {number}, but only lines up to "
                f"{self._next_n - 1} were sent; it may have restarted"
            )
            return
        if number not in self._history:
            self._protocol_failure(
                f"the firmware asked to resend line {number}, which is no longer in the "
                "resend history; it may have restarted"
            )
            return
        if self._settling and self._rewind_n == number:
            # A line sent before the rewind arrived out of sequence (or cut by the
            # firmware's buffer flush): its request is stale, the rewind already happened.
            self._stale_budget -= 1
            self.stats["stale_resends"] += 1
            return
        if self._streak_n == number:
            self._streak += 1
        else:
            self._streak_n, self._streak = number, 1
        if self._streak >= self.max_resends:
            line = self._history[number]
            self._link_failure(
                f"the printer asked for line {number} ({line.command!r}) {self._streak} "
                "times in a row: the serial link corrupts data; check the USB cable, "
                "its shielding and the baud rate"
            )
            return
        removed = self._drop_inflight_from(number)
        self._stale_budget = max(0, removed - 1)
        self._rewind_n = number
        self._cursor = number
        self.stats["resends"] += 1
        log.info("marlin: resend from line %s (%s, %s in flight)", number, error_class, removed)
        self._sent_since_rewind.clear()
        self._settling = True
        self._schedule_settle()

    def _schedule_settle(self) -> None:
        if self._settle_handle is not None:
            self._settle_handle.cancel()
        loop = asyncio.get_running_loop()
        self._settle_handle = loop.call_later(self.resend_settle_s, self._end_settle)

    def _end_settle(self) -> None:
        """The firmware has been quiet since the rewind: resend, one line at a time."""
        self._settle_handle = None
        self._settling = False
        self._stale_budget = 0
        self._pump()

    def _drop_inflight_from(self, number: int) -> int:
        kept: deque[_Line] = deque()
        removed = 0
        for line in self._inflight:
            if line.number is not None and line.number >= number:
                removed += 1
            else:
                kept.append(line)
        self._inflight = kept
        return removed

    # -- actions, faults, link loss -------------------------------------------------------

    def _on_action(self, message: str) -> None:
        action = message.split(" ", 1)[0] if message else ""
        self._emit(EventKind.ACTION, action=action, line=message)
        job = self._job
        if job is None or job.cancelling:
            return
        call: Callable[[], Any] | None = {
            "pause": self.pause,
            "resume": self.resume,
            "cancel": self.cancel,
        }.get(action)
        if call is not None:
            task = asyncio.get_running_loop().create_task(call())
            task.add_done_callback(_log_task_error)

    def _on_firmware_restart(self) -> None:
        self._emit(EventKind.LOG, line="start")
        if self._job is not None or self._inflight:
            self._halt("the printer restarted (it printed 'start'); reconnect to continue")

    def _halt(self, reason: str) -> None:
        if self._halted is not None:
            return
        self._halted = reason
        log.warning("marlin halted: %s", reason)
        self._fail_waiters(FirmwareError(reason))
        self._pending.clear()
        self._inflight.clear()
        if self._job is not None:
            self._end_job(EventKind.FAILED, reason)
        self._set_status(state=MachineState.ERROR, message=reason)

    def _protocol_failure(self, reason: str) -> None:
        self._link_failure(reason)

    def _link_failure(self, reason: str) -> None:
        """Stop on a broken link: report, close the port."""
        self._on_link_lost(reason)
        if self._link is not None:
            self._link.close(reason)

    def _on_link_lost(self, reason: str) -> None:
        if self._status.state is MachineState.OFFLINE and self._job is None:
            return
        log.warning("marlin link lost: %s", reason)
        last = self._job.last_acked if self._job is not None else None
        if self._job is not None:
            self._end_job(EventKind.FAILED, reason)
        self._fail_waiters(MachineOffline(reason))
        self._pending.clear()
        self._inflight.clear()
        self._set_status(state=MachineState.OFFLINE, message=reason)
        self._emit(EventKind.DISCONNECTED, reason=reason, last_line=last)
        if self._link is not None:
            self._link.close(reason)

    def _fail_waiters(self, exc: DriverError) -> None:
        for line in list(self._inflight) + list(self._pending):
            if line.waiter is not None and not line.waiter.future.done():
                line.waiter.future.set_exception(exc)
                line.waiter.future.exception()  # mark retrieved: the caller may be gone

    # -- timers ---------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        try:
            while True:
                await asyncio.sleep(0.2)
                self._tick(time.monotonic())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("marlin ticker failed")

    def _tick(self, now: float) -> None:
        link = self._link
        if link is None or not link.is_open or self._halted is not None:
            return
        job = self._job
        job_waits = job is not None and not job.paused
        waiting = bool(self._inflight) or self._cursor < self._next_n or job_waits
        long = any(e.long for e in self._inflight)
        if waiting:
            silent = now - self._last_progress
            limit = self.long_timeout_s if long else self.timeout_s
            job_lines_out = any(e.job_index is not None for e in self._inflight)
            if (
                job is not None
                and job_waits
                and not job_lines_out
                and self._cursor == self._next_n
                and now - self._job_progress_at > limit
            ):
                # Everything was sent and nothing is in flight, yet lines are unanswered:
                # the firmware skipped lines (VirtualPrinter's resend counter does).
                total = len(job.program.lines)
                self._halt(
                    f"the job stalled: the printer acknowledged {job.acked} of {total} lines "
                    "and nothing is in flight: it skipped lines or lost them; check the program ran"
                )
                return
            if silent > limit:
                oldest = self._inflight[0] if self._inflight else None
                what = f" for line {oldest.number} {oldest.command!r}" if oldest else ""
                self._link_failure(
                    f"no reply from the printer for {silent:.0f} s (waiting for 'ok'{what}): "
                    "the link is gone; check the USB cable and that the printer is on"
                )
                return
            if (
                self._rewind_n is not None
                and not long
                and now - self._last_progress > self.resend_probe_s
                and now - self._last_probe > self.resend_probe_s
            ):
                # The resent line got no reply at all: it was lost too. Send it again.
                log.info("marlin: no reply to resent line %s; sending it again", self._rewind_n)
                self._last_probe = now
                self.stats["probes"] += 1
                self._drop_inflight_from(self._rewind_n)
                self._cursor = self._rewind_n
                self._pump()
                return
            if (
                self._rewind_n is None
                and not long
                and self._cursor == self._next_n
                and now - self._last_progress > self.stall_probe_s
                and now - self._last_probe > self.stall_probe_s
                and not any(e.is_poll or _is_m105(e) for e in self._inflight)
            ):
                # No ok for a while: if one was lost on the link, the M105's "ok T:" answer
                # accounts for every line before it (see _on_ok).
                log.info("marlin: no ok for %.1f s; probing with M105", now - self._last_progress)
                self._last_probe = now
                self.stats["probes"] += 1
                with contextlib.suppress(MachineOffline):
                    self._send_fresh(_Line(command="M105", is_poll=True))
                return
        autoreport = self.capabilities.get("AUTOREPORT_TEMP", False)
        interval = self.poll_interval_job_s if self._job is not None else self.poll_interval_s
        if (
            not autoreport
            and not long
            and now - self._last_poll > interval
            and not any(e.is_poll for e in self._inflight)
            and not any(e.is_poll for e in self._pending)
        ):
            self._last_poll = now
            self._pending.append(_Line(command="M105", is_poll=True))
            self._pump()


def _is_m105(line: _Line) -> bool:
    return line.command.startswith("M105")


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("marlin action failed: %s", task.exception())
