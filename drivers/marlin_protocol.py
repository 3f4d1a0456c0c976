"""Marlin's line protocol without I/O: line numbers, the window, resends and ok accounting.

`MarlinProtocol` decides what to write and what each reply means; it never touches a port
or the event loop. Its owner (drivers/marlin.py) feeds it every reply line (`on_reply`),
calls `tick()` when `deadline()` is due, writes what `take_writes()` returns and acts on
what `take_done()` returns. Time comes from an injected clock, so every case is testable
with a fake one (tests/drivers/marlin/test_marlin_protocol_core.py).

How a resend is handled (Marlin's `gcode_line_error`, and OctoPrint's VirtualPrinter):
- A fault makes the firmware say `Error:...` and `Resend: n` and `ok`, and drain its
  receive buffer. Every line still on its way then draws another error, `Resend: n` and
  `ok`. The first request opens a *burst*; every request and ok until the firmware has
  been quiet for `settle_s` belongs to it: duplicates are collapsed and their oks
  swallowed (one ok per `Resend:` line, plus the deferred oks of lines before `n` that the
  firmware holds in its queue).
- Then the window drops to one line. If it is safe, an *anchor* `N<n-1> M110 N<n-1>` puts
  the firmware's line counter exactly where the host believes it is (this also undoes
  VirtualPrinter's drifting resend counter), and line `n` follows once the anchor's ok
  is in. The window widens again after `clean_lines` lines acknowledged without a fault.
- A burst that claims the firmware has line `n` although it asked for `n` and has not
  been sent `n` since (VirtualPrinter's `resend_with_timeout` does this) is a lie: the
  host anchors at `n - 1` and sends `n` again, so the line runs instead of being lost.
- An unanswered line is sent again with its number after `line_timeout_s` (a "wait"
  from an idle firmware triggers it early). A firmware that already has it asks for the
  next line; one that lost it runs it. The job is never failed for that.
- Long commands (G28, M109, ...) are a barrier: nothing is sent behind them until their
  ok, and `busy:`/heating reports keep the link alive meanwhile.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from drivers.base import Temperature

log = logging.getLogger(__name__)

#: Commands that legitimately keep the firmware silent for minutes (homing, probing, heating,
#: waiting for moves, filament change, dwell, auto-tune, calibration).
LONG_COMMANDS = frozenset(
    {"G28", "G29", "M109", "M190", "M191", "M400", "M600", "G4", "M0", "M1", "M303", "G33", "G34"}
)
#: Long commands during which temperature reports are signs of life.
HEATING_COMMANDS = frozenset({"M109", "M190", "M191", "M303"})


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
_GLUE_START_RE = re.compile(
    r"(?<=\S)(?=Resend:|Error:|Cap:|//action:|FIRMWARE_NAME:|echo:)|(?<=\d)(?=(?:ok|wait)$)"
)
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
# Motion limits reported by M503 (and the planner size M115 or ADVANCED_OK reveals)

_WORD_RE = re.compile(r"([A-Z])\s*(-?\d+(?:\.\d+)?)")
_M503_RE = re.compile(r"^(?:echo:)?\s*(M20[1345]|M900)\b(.*)$")
_BLOCKS_RE = re.compile(r"(?:BLOCK_BUFFER_SIZE|PLANNER_BUFFER(?:_SIZE)?|BLOCKS?)\s*[:=]\s*(\d+)")
_AXES = ("X", "Y", "Z", "E")


def parse_motion_limits(
    m503: Iterable[str], m115: Iterable[str] = (), idle_planner_free: int | None = None
) -> dict[str, Any]:
    """Parse the M201/M203/M204/M205/M900 lines of an M503 report into motion limits.

    Keys follow `MachineLimits` in microfactory/analysis/gcode.py: per-axis tuples (X, Y, Z,
    E) in mm/s and mm/s², `junction_deviation` in mm when the firmware uses it (M205 J > 0)
    and `max_jerk` otherwise, plus `linear_advance_k` and `planner_blocks`. Only what the
    firmware reported is present. `planner_blocks` comes from M115 if it names the buffer,
    else from ADVANCED_OK's free planner blocks on an idle printer (Marlin holds one less
    than BLOCK_BUFFER_SIZE).
    """
    limits: dict[str, Any] = {}
    for raw in m503:
        match = _M503_RE.match(raw.strip())
        if not match:
            continue
        code, rest = match.group(1), match.group(2).split(";", 1)[0]
        words = {k: float(v) for k, v in _WORD_RE.findall(rest.upper())}
        if code in ("M201", "M203"):
            key = "max_acceleration" if code == "M201" else "max_feedrate"
            if any(a in words for a in _AXES):
                limits[key] = tuple(words.get(a, 0.0) for a in _AXES)
        elif code == "M204":
            if "P" in words:
                limits["print_acceleration"] = words["P"]
            elif "S" in words:
                limits["print_acceleration"] = words["S"]
            if "R" in words:
                limits["retract_acceleration"] = words["R"]
            if "T" in words:
                limits["travel_acceleration"] = words["T"]
            elif "S" in words:
                limits["travel_acceleration"] = words["S"]
        elif code == "M205":
            if words.get("J", 0.0) > 0:
                limits["junction_deviation"] = words["J"]
            elif any(a in words for a in _AXES):
                limits["max_jerk"] = tuple(words.get(a, 0.0) for a in _AXES)
                limits["junction_deviation"] = None
            if "S" in words:
                limits["min_extrude_feedrate"] = words["S"]
            if "T" in words:
                limits["min_travel_feedrate"] = words["T"]
            if "B" in words:
                limits["min_segment_time_us"] = words["B"]
        elif code == "M900" and "K" in words:
            limits["linear_advance_k"] = words["K"]
    for raw in m115:
        blocks = _BLOCKS_RE.search(raw.upper())
        if blocks:
            limits["planner_blocks"] = int(blocks.group(1))
            break
    else:
        if idle_planner_free is not None:
            limits["planner_blocks"] = idle_planner_free + 1
    return limits


# ---------------------------------------------------------------------------------------
# The protocol core


@dataclass(slots=True, eq=False)
class Cmd:
    """One command on its way through the protocol core.

    `tag` is the owner's (a program line index, a waiter, ...); the core never reads it.
    """

    command: str
    tag: Any = None
    long: bool = False
    heating: bool = False
    number: int | None = None  # None: unnumbered (M108), or not yet numbered
    wire: bytes = b""
    anchor: bool = False  # an `N<n> M110 N<n>` the core sent itself
    unnumbered: bool = False
    done: bool = False
    copies: int = 0  # copies written since the last anchor
    requested: bool = False  # the firmware asked for this line
    copies_since_request: int = 0

    @classmethod
    def of(cls, command: str, tag: Any = None) -> Cmd:
        """Return a command with its long/heating flags set from its code."""
        code = command_code(command)
        return cls(command, tag, long=code in LONG_COMMANDS, heating=code in HEATING_COMMANDS)


@dataclass(slots=True)
class _Burst:
    """Replies that belong to one fault, collected until the firmware is quiet."""

    first: int | None = None  # the line the first request asked for
    claim: int | None = None  # the highest line a later request asked for
    lower: bool = False  # a later request asked for a line below `first`
    pairs: int = 0  # "Resend:" lines: each comes with one ok
    oks: int = 0
    junk: int = 0  # "Unknown command" echoes of cut lines: each comes with one ok
    anchor_target: int | None = None  # an anchor was in flight: the host's own target
    expect: int = 0  # lines in flight when it began: each draws at most one ok


@dataclass(slots=True)
class _WindowTuner:
    """Picks the lines in flight that the link and firmware actually go fastest with.

    Sending ahead hides the link's round trip, which is what counts on a USB-serial link (1
    to 16 ms). Where the round trip is negligible and the firmware's own processing is the
    limit, more lines in flight can be slower: OctoPrint's VirtualPrinter, whose reader,
    writer and planner threads contend for one interpreter lock, runs fastest with one or
    two lines on a bare pty. So the core measures: it streams `probe_lines` clean lines at
    each candidate window in turn (interleaved, `rounds` times, so that the program's
    content weighs alike on each), keeps the fastest by the median, and holds it for
    `hold_lines` lines before measuring again. A smaller window must be faster by `margin`
    to be chosen: a printer that is bound by its motion, not its link, keeps the full window
    (what keeps its planner fed on short segments).
    """

    candidates: tuple[int | None, ...]  # None: the full window
    probe_lines: int = 128
    rounds: int = 3
    hold_lines: int = 4000
    margin: float = 0.1
    warmup: int = 4  # lines after a switch before the epoch's clock starts
    schedule: list[int | None] = field(default_factory=list)
    index: int = 0
    times: dict[int | None, list[float]] = field(default_factory=dict)
    holding: bool = False
    count: int = 0  # lines in the current epoch (negative: still warming up)
    started: float = 0.0
    faults: int = 0
    chosen: int | None = None
    choices: list[int | None] = field(default_factory=list)  # every decision, in order

    def reset(self) -> None:
        self.schedule = [c for _ in range(self.rounds) for c in self.candidates]
        self.index, self.times, self.holding = 0, {}, False
        self.count, self.chosen = -self.warmup, self.schedule[0]

    @property
    def cap(self) -> int | None:
        return self.chosen

    def restart_epoch(self) -> None:
        self.count = -self.warmup

    def on_line(self, now: float, faults: int) -> None:
        """One program line acknowledged without doubt, at the full window."""
        if self.holding:
            self.count += 1
            if self.count >= self.hold_lines:
                self.reset()
            return
        if self.count < 0:
            self.count += 1
            if self.count == 0:
                self.started, self.faults = now, faults
            return
        if faults != self.faults:
            self.restart_epoch()  # a fault's time is not the window's
            return
        self.count += 1
        if self.count < self.probe_lines:
            return
        self.times.setdefault(self.schedule[self.index], []).append(now - self.started)
        self.index += 1
        if self.index < len(self.schedule):
            self.chosen = self.schedule[self.index]
            self.restart_epoch()
            return
        median = {c: sorted(t)[len(t) // 2] for c, t in self.times.items()}
        full = median[self.candidates[0]]
        best = min(median, key=lambda c: median[c])
        if best != self.candidates[0] and median[best] > full * (1 - self.margin):
            best = self.candidates[0]
        self.chosen, self.holding, self.count = best, True, 0
        self.choices.append(best)
        log.info(
            "marlin: window %s chosen (%s)",
            "full" if best is None else best,
            ", ".join(
                f"{'full' if c is None else c}: {self.probe_lines / t:.0f} lines/s"
                for c, t in median.items()
                if t > 0
            ),
        )


class MarlinProtocol:
    """Numbered, checksummed send-ahead streaming with resends; no I/O, injected clock."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        window: int = 4,
        buffer_slots: int = 4,
        rx_buffer: int = 128,
        line_timeout_s: float = 3.0,
        long_timeout_s: float = 900.0,
        dead_after_s: float = 60.0,
        settle_s: float = 0.02,
        clean_lines: int = 16,
        max_resends: int = 10,
        wait_grace_s: float = 0.5,
        history: int = 4096,
        autotune: bool = False,
    ) -> None:
        self.clock = clock
        self.max_window = max(1, window)
        self.buffer_slots = max(1, buffer_slots)
        self.rx_buffer = rx_buffer
        self.line_timeout_s = line_timeout_s
        self.long_timeout_s = long_timeout_s
        self.dead_after_s = dead_after_s
        self.settle_s = settle_s
        self.clean_lines = max(1, clean_lines)
        self.max_resends = max_resends
        self.wait_grace_s = wait_grace_s
        self.history_size = max(64, history)
        self.feed: Callable[[], Cmd | None] | None = None
        #: Measures which window streams fastest (see _WindowTuner); off: the full window.
        self.autotune = autotune
        self._tuner: _WindowTuner | None = None
        #: Set once a resend-class error names no line ("Error: Checksum mismatch", as
        #: VirtualPrinter says): such a firmware's counter cannot be audited, so any claim
        #: that skips unacknowledged lines is answered with an anchor.
        self.distrust = False
        self.learned_slots: int | None = None
        self.idle_planner_free: int | None = None
        self.stats = {
            "lines_sent": 0,
            "resends": 0,  # faults (bursts) handled
            "stale_resends": 0,  # duplicate requests collapsed into a burst
            "swallowed_oks": 0,
            "anchors": 0,
            "lies": 0,  # the firmware claimed a line it had asked for and not been sent
            "timeouts": 0,
            "stray_oks": 0,
        }
        self.start(0)

    # -- state ----------------------------------------------------------------------------

    def start(self, next_number: int) -> None:
        """Forget everything; the firmware's next expected line is `next_number`."""
        self._next_n = next_number
        self._cursor = next_number
        self._history: dict[int, Cmd] = {}
        self._inflight: deque[Cmd] = deque()
        self._pending: deque[Cmd] = deque()
        self._staged: Cmd | None = None  # taken from feed() but not yet sent
        self._window = self.max_window
        self._clean = 0
        self._tuner = None
        if self.autotune and self.max_window > 1:
            self._tuner = _WindowTuner(
                candidates=tuple(dict.fromkeys((None, *(w for w in (2, 1) if w < self.max_window))))
            )
            self._tuner.reset()
        self._burst: _Burst | None = None
        self._swallow = 0
        self._credit = 0
        self._streak_cmd: Cmd | None = None  # the line the firmware keeps asking for
        self._streak = 0
        self._writes: list[bytes] = []
        self._done: list[tuple[Cmd, str]] = []
        self.failure: str | None = None
        self.halted = False
        now = self.clock()
        self._last_rx = now
        self._last_activity = now
        self._last_write = now

    @property
    def window(self) -> int:
        """Lines allowed in flight right now (1 while recovering from a fault)."""
        return self._window

    @property
    def window_choices(self) -> list[int]:
        """The windows the tuner chose so far, in order (the full window as its size)."""
        if self._tuner is None:
            return []
        full = max(self.max_window, self.learned_slots or 0)
        return [full if c is None else c for c in self._tuner.choices]

    @property
    def settling(self) -> bool:
        """Whether a fault's replies are still being collected."""
        return self._burst is not None

    @property
    def next_number(self) -> int:
        """The number the next fresh line gets."""
        return self._next_n

    def inflight(self) -> list[Cmd]:
        """Commands written and not yet answered, oldest first."""
        return list(self._inflight)

    def oldest(self) -> Cmd | None:
        """The command the next reply lines belong to, if any."""
        return self._inflight[0] if self._inflight else None

    def busy(self) -> bool:
        """Whether anything is in flight, queued, being resent or settling."""
        return bool(
            self._inflight
            or self._pending
            or self._staged is not None
            or self._cursor < self._next_n
            or self._burst is not None
        )

    def long_inflight(self) -> bool:
        """Whether a long command (homing, heating, ...) is in flight."""
        return any(c.long for c in self._inflight)

    def take_writes(self) -> list[bytes]:
        """Return and forget the bytes to write, in order."""
        out, self._writes = self._writes, []
        return out

    def take_done(self) -> list[tuple[Cmd, str]]:
        """Return and forget the commands the firmware accepted, with their ok text."""
        out, self._done = self._done, []
        return out

    def halt(self) -> None:
        """Send nothing more (a firmware fault, an emergency stop, a closed link)."""
        self.halted = True
        self._pending.clear()
        self._staged = None

    def drop_unsent(self) -> list[Cmd]:
        """Forget commands not yet written (cancel); return them."""
        dropped = list(self._pending)
        if self._staged is not None:
            dropped.append(self._staged)
        self._pending.clear()
        self._staged = None
        return dropped

    # -- sending --------------------------------------------------------------------------

    def submit(self, cmd: Cmd) -> None:
        """Queue a command to be numbered and sent after everything before it."""
        self._pending.append(cmd)
        self.pump()

    def write_unnumbered(self, command: str) -> Cmd:
        """Write a command at once, ahead of the window and unnumbered (M108); its ok counts."""
        cmd = Cmd(command, unnumbered=True, wire=(command + "\n").encode("ascii", "replace"))
        if not self.halted:
            self._writes.append(cmd.wire)
            self._inflight.append(cmd)
        return cmd

    def _slots(self) -> int:
        return self.learned_slots if self.learned_slots is not None else self.buffer_slots

    def _limit(self) -> int:
        if self._window < self.max_window:
            return self._window
        limit = self.max_window
        if self.learned_slots is not None:
            limit = max(self.max_window, self.learned_slots)
        cap = self._tuner.cap if self._tuner is not None else None
        return limit if cap is None else min(limit, cap)

    def _may_send(self, wire_len: int) -> bool:
        if self._burst is not None or self.halted or self.failure is not None:
            return False
        if any(c.anchor or c.long for c in self._inflight):
            return False  # a barrier: nothing goes out behind it until its ok
        n = len(self._inflight)
        if n >= self._limit():
            return False
        slots = self._slots()
        if n >= slots:
            # Lines beyond the command slots wait in the receive buffer; real Marlin drops
            # the bytes that do not fit.
            spill = sum(len(c.wire) for c in list(self._inflight)[slots:])
            if spill + wire_len > self.rx_buffer - 1:
                return False
        return True

    def _next_fresh(self) -> Cmd | None:
        if self._staged is not None:
            return self._staged
        if self._pending:
            return self._pending[0]
        if self.feed is not None and self._may_send(0):
            self._staged = self.feed()
        return self._staged

    def pump(self) -> None:
        """Write every line the firmware's buffers have room for, strictly in order."""
        while self.failure is None and not self.halted:
            if self._cursor < self._next_n:
                cmd = self._history.get(self._cursor)
                if cmd is None:
                    self.failure = (
                        f"the firmware needs line {self._cursor}, which is no longer in the "
                        "resend history; it may have restarted"
                    )
                    return
                if not self._may_send(len(cmd.wire)):
                    return
                self._cursor += 1
                self._write(cmd)
                continue
            cmd = self._next_fresh()
            if cmd is None:
                return
            number = self._next_n
            wire = (format_line(number, cmd.command) + "\n").encode("ascii", "replace")
            if not self._may_send(len(wire)):
                return
            if self._staged is cmd:
                self._staged = None
            else:
                self._pending.popleft()
            cmd.number, cmd.wire = number, wire
            self._history[number] = cmd
            self._history.pop(number - self.history_size, None)
            self._next_n = self._cursor = number + 1
            self._write(cmd)

    def _write(self, cmd: Cmd) -> None:
        now = self.clock()
        if not self._inflight:
            self._last_activity = now  # the reply clock starts now
        self._last_write = now
        cmd.copies += 1
        if cmd.requested:
            cmd.copies_since_request += 1
        self._writes.append(cmd.wire)
        self._inflight.append(cmd)
        self.stats["lines_sent"] += 1

    def _write_anchor(self, target: int) -> None:
        """Renumber the lines from `target` on and set the firmware's counter before them.

        The anchor is `N<target> M110 N<target>`; the line that was `target` becomes
        `target + 1`, and so on. Numbers only ever move forward, so a stale reply can never
        be mistaken for a request for a renumbered line, and a firmware that misbehaves at
        a given number (VirtualPrinter's simulated errors are keyed by number and re-armed
        by M110) meets a new one.
        """
        tail = [self._history.pop(n) for n in range(target, self._next_n) if n in self._history]
        for i, line in enumerate(tail):
            line.number = target + 1 + i
            line.wire = (format_line(line.number, line.command) + "\n").encode("ascii", "replace")
            line.copies = line.copies_since_request = 0
            line.requested = False
            self._history[line.number] = line
        self._next_n = target + 1 + len(tail)
        self._cursor = target + 1
        body = f"M110 N{target}"
        anchor = Cmd(body, number=target, anchor=True)
        # A blank line first: Marlin (and VirtualPrinter) ignore an empty line, and a
        # firmware that drops the next line it receives after a fault (VirtualPrinter's
        # resend_with_timeout) drops the blank line instead of the anchor, which would
        # otherwise cost a timeout.
        anchor.wire = ("\n" + format_line(target, body) + "\n").encode("ascii")
        self.stats["anchors"] += 1
        self._write(anchor)

    # -- receiving ------------------------------------------------------------------------

    def on_reply(self, reply: Reply) -> None:
        """Account for one reply line from the firmware."""
        now = self.clock()
        self._last_rx = now
        kind = reply.kind
        if kind is ReplyKind.OK:
            self._on_ok(reply, now)
        elif kind is ReplyKind.RESEND:
            self._on_request(reply.number, now, pair=True)
        elif kind is ReplyKind.ERROR and reply.error_class is not ErrorClass.FATAL:
            number = None if reply.number is None else reply.number + 1
            if number is None and not self.distrust:
                self.distrust = True
                log.info("marlin: the firmware's errors name no line (%r)", reply.text)
            self._on_request(number, now, pair=False)
        elif kind is ReplyKind.BUSY:
            self._last_activity = now
        elif kind is ReplyKind.TEMPERATURE:
            if any(c.heating for c in self._inflight):
                self._last_activity = now
        elif kind is ReplyKind.WAIT:
            # An idle firmware's heartbeat: whatever is in flight never arrived.
            if (
                self._inflight
                and self._burst is None
                and not self.long_inflight()
                and now - self._last_write > self.wait_grace_s
            ):
                self._timeout(now, "the firmware says it is idle ('wait')")
        elif kind is ReplyKind.ECHO:
            junk = re.match(r'Unknown command:\s*"([^"]*)"', reply.message)
            if junk and not re.match(r"\s*[GMTgmt]\d", junk.group(1)):
                # The tail of a line cut by the firmware's buffer drain ran as a command:
                # its ok answers no line of ours.
                if self._burst is not None:
                    self._burst.junk += 1
                else:
                    self._swallow += 1
        self.pump()

    def _on_ok(self, reply: Reply, now: float) -> None:
        self._last_activity = now
        if reply.slots_free is not None:
            # ADVANCED_OK reports free slots while the acknowledged command still holds
            # one, so the buffer has B + 1 slots (an idle Marlin with BUFSIZE 4 says B3).
            slots = min(64, reply.slots_free + 1)
            if self.learned_slots is None or slots > self.learned_slots:
                self.learned_slots = slots
        free = reply.planner_free
        if free is not None and len(self._inflight) <= 1:
            self.idle_planner_free = max(free, self.idle_planner_free or 0)
        burst = self._burst
        if burst is not None:
            burst.oks += 1
            self.stats["swallowed_oks"] += 1
            if (
                burst.expect
                and burst.anchor_target is None
                and burst.oks >= burst.expect + burst.junk
            ):
                # Every line that was in flight has answered (an ok of its own or the ok
                # after its "Resend:"): no need to wait for quiet.
                self._resolve(now)
            return
        if self._swallow > 0:
            self._swallow -= 1
            self.stats["swallowed_oks"] += 1
            return
        if not self._inflight:
            self.stats["stray_oks"] += 1
            return
        self._confirm(self._inflight.popleft(), reply.text)

    def _confirm(self, cmd: Cmd, text: str) -> None:
        if cmd.anchor:
            return  # the firmware's counter is where we want it; the resend follows
        if cmd.done:
            return
        cmd.done = True
        if cmd.number is not None:
            if self._streak_cmd is cmd:
                self._streak_cmd, self._streak = None, 0
            self._clean += 1
            if self._window < self.max_window and self._clean >= self.clean_lines:
                self._window = self.max_window
                self._credit = 0  # the link has been clean: old surplus means nothing
            tuner = self._tuner
            if tuner is not None:
                if cmd.long or self._window < self.max_window:
                    tuner.restart_epoch()
                else:
                    tuner.on_line(self.clock(), self.stats["resends"] + self.stats["timeouts"])
        self._done.append((cmd, text))

    def _on_request(self, number: int | None, now: float, pair: bool) -> None:
        self._last_activity = now
        burst = self._burst
        if burst is None:
            burst = self._burst = _Burst(first=number, expect=len(self._inflight))
            anchor = next((c for c in self._inflight if c.anchor), None)
            if anchor is not None and anchor.number is not None:
                burst.anchor_target = anchor.number + 1
            self._window, self._clean = 1, 0
            self.stats["resends"] += 1
            self._mark_requested(number)
        elif number is not None:
            self.stats["stale_resends"] += 1
            if burst.first is None:
                burst.first = number
                self._mark_requested(number)
            elif number > burst.first:
                burst.claim = number if burst.claim is None else max(burst.claim, number)
            elif number < burst.first:
                burst.lower = True
                burst.first = number
                self._mark_requested(number)
        if pair:
            burst.pairs += 1

    def _mark_requested(self, number: int | None) -> None:
        cmd = self._history.get(number) if number is not None else None
        if cmd is not None:
            cmd.requested = True
            cmd.copies_since_request = 0

    # -- timers ---------------------------------------------------------------------------

    def deadline(self) -> float | None:
        """When `tick()` must run next, or None if nothing is waiting."""
        if self.failure is not None or self.halted:
            return None
        if self._burst is not None:
            return self._last_rx + self.settle_s
        if self._inflight:
            limit = self.long_timeout_s if self.long_inflight() else self.line_timeout_s
            return self._last_activity + limit
        return None

    def tick(self) -> None:
        """Handle what is due: the end of a burst, an unanswered line, a dead link."""
        if self.failure is not None or self.halted:
            return
        now = self.clock()
        if self._burst is not None:
            if now - self._last_rx >= self.settle_s:
                self._resolve(now)
            return
        if not self._inflight:
            return
        long = self.long_inflight()
        if now - self._last_rx > (self.long_timeout_s if long else self.dead_after_s):
            oldest = self._inflight[0]
            self.failure = (
                f"no reply from the printer for {now - self._last_rx:.0f} s (waiting for 'ok' "
                f"for line {oldest.number} {oldest.command!r}): the link is gone; check the "
                "USB cable and that the printer is on"
            )
            return
        limit = self.long_timeout_s if long else self.line_timeout_s
        if now - self._last_activity >= limit:
            self._timeout(now, f"no reply for {now - self._last_activity:.1f} s")

    def _timeout(self, now: float, why: str) -> None:
        """Send the oldest unanswered line again, with its number, alone."""
        self.stats["timeouts"] += 1
        self._last_activity = now
        oldest = self._inflight[0]
        if oldest.anchor:
            log.info("marlin: %s; sending the anchor %r again", why, oldest.command)
            self._inflight.clear()
            self._write(oldest)
            return
        numbered = [c for c in self._inflight if c.number is not None and not c.anchor]
        self._inflight.clear()  # unnumbered ones (M108) are not repeated
        if not numbered:
            return
        first = numbered[0]
        assert first.number is not None
        log.info("marlin: %s; sending line %s again", why, first.number)
        self._window, self._clean = 1, 0
        self._cursor = first.number
        self.pump()

    def _resolve(self, now: float) -> None:
        """The firmware is quiet after a fault: decide where to resume, and how."""
        burst = self._burst
        assert burst is not None
        self._burst = None
        self._last_activity = now
        numbered = [c for c in self._inflight if c.number is not None and not c.anchor]
        lowest = numbered[0].number if numbered else self._cursor
        assert lowest is not None
        asked = [n for n in (burst.first, burst.claim) if n is not None]
        claim = max(asked) if asked else None
        lowest_cmd = self._history.get(lowest)
        target = lowest
        lie = True
        if burst.anchor_target is not None:
            target = burst.anchor_target  # an anchor was in flight: only the host knows
        elif claim is None:
            pass  # no line named at all: resume from the host's own count
        elif claim > self._next_n:
            pass  # a line never sent (VirtualPrinter's drifting counter)
        elif claim > lowest and (
            self.distrust
            or (
                lowest_cmd is not None
                and lowest_cmd.requested
                and lowest_cmd.copies_since_request == 0
            )
        ):
            # The firmware claims lines nobody acknowledged: it asked for `lowest` and was
            # not sent it again (VirtualPrinter's resend_with_timeout), or it is a firmware
            # whose errors do not say which line they saw last and whose oks are never
            # deferred (VirtualPrinter's checksum errors ask for a drifting counter + 1).
            self.stats["lies"] += 1
            log.info(
                "marlin: the firmware claims line %s although line %s was never "
                "acknowledged; anchoring at %s",
                claim - 1,
                lowest,
                lowest - 1,
            )
        elif burst.lower and burst.first is not None:
            target, lie = burst.first, False
        else:
            target, lie = claim, False
        if target < self._next_n and target not in self._history:
            self.failure = (
                f"the firmware asked to resend line {target}, which is no longer in the "
                "resend history; it may have restarted"
            )
            return
        # Lines before the target are in the firmware; their oks may still come (Marlin
        # acknowledges a queued line when it runs).
        owed = 0
        for cmd in self._inflight:
            if cmd.anchor:
                continue
            if cmd.unnumbered or (cmd.number is not None and cmd.number < target):
                owed += 1
                if not cmd.unnumbered:
                    self._confirm(cmd, "ok")
        self._inflight.clear()
        if not lie and not self.distrust:
            # The firmware has every line before the target, also lines that were not in
            # flight: a timeout takes the lines in flight out to send them again one by
            # one, and the firmware may have run them all before it meets the first copy.
            for number in range(min(self._cursor, lowest), target):
                held = self._history.get(number)
                if held is not None and not held.done and not held.anchor:
                    self._confirm(held, "ok")
        # One ok per "Resend:" line, per junk echo and per line the firmware still owes an
        # ok for. Surplus oks (a resent line accepted while the burst's replies were still
        # coming) are credited: they are the owed oks of the next burst.
        balance = burst.oks + self._credit - (burst.pairs + burst.junk + owed)
        self._credit, self._swallow = max(0, balance), max(0, -balance)
        key = self._history.get(target)
        if key is not None and self._streak_cmd is key:
            self._streak += 1
        else:
            self._streak_cmd, self._streak = key, 1
        if self.max_resends and self._streak >= self.max_resends:
            line = self._history.get(target)
            what = f" ({line.command!r})" if line is not None else ""
            self.failure = (
                f"the printer asked for line {target}{what} {self._streak} times in a row: the "
                "serial link corrupts data; check the USB cable, its shielding and the baud rate"
            )
            return
        self._cursor = target
        self._window, self._clean = 1, 0
        log.info(
            "marlin: resend from line %s (%s requests, %s oks, %s owed%s)",
            target,
            burst.pairs,
            burst.oks,
            owed,
            ", anchored" if lie or self.distrust else "",
        )
        if lie or self.distrust:
            # A firmware that does not name the line it saw last may count rejected lines
            # (VirtualPrinter's current_line does, and its next checksum error then asks for
            # a line past the damaged one): reset its counter after every fault.
            self._write_anchor(target)
        self.pump()
