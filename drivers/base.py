"""The one async interface every machine driver implements, and what it returns."""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar, overload


class MachineState(StrEnum):
    """What a machine is doing, as every reader of a status snapshot sees it."""

    OFFLINE = "offline"
    CONNECTING = "connecting"
    IDLE = "idle"
    RUNNING = "running"
    PAUSED = "paused"
    ERROR = "error"  # a firmware fault or alarm: needs an operator


@dataclass(frozen=True, slots=True)
class Temperature:
    """One heater: actual and target, in degrees Celsius."""

    actual: float
    target: float | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    """How far the running program is."""

    lines_total: int
    lines_sent: int = 0
    lines_acked: int = 0
    started_at: float | None = None  # time.time()
    last_line: str | None = None  # the last acknowledged program line, as sent
    percent_hint: float | None = None  # a peer's own completion figure (OctoPrint)
    eta_s_hint: float | None = None  # a peer's own time left (OctoPrint)

    @property
    def percent(self) -> float:
        """Completion in percent, from the peer when it knows better."""
        if self.percent_hint is not None:
            return round(self.percent_hint, 2)
        if self.lines_total <= 0:
            return 0.0
        return round(100.0 * self.lines_acked / self.lines_total, 2)

    @property
    def eta_s(self) -> float | None:
        """Seconds left, extrapolated from the rate so far."""
        if self.eta_s_hint is not None:
            return self.eta_s_hint
        if self.started_at is None or self.lines_acked <= 0:
            return None
        elapsed = time.time() - self.started_at
        rate = self.lines_acked / max(elapsed, 1e-6)
        return round((self.lines_total - self.lines_acked) / rate, 1)

    def as_dict(self) -> dict[str, Any]:
        """Return the progress shape the API reports."""
        return {
            "percent": self.percent,
            "lines_acked": self.lines_acked,
            "lines_sent": self.lines_sent,
            "lines_total": self.lines_total,
            "eta_s": self.eta_s,
            "last_line": self.last_line,
        }


@dataclass(frozen=True, slots=True)
class Status:
    """One snapshot of a machine; every reader shares the same shape (as Klipper does)."""

    state: MachineState = MachineState.OFFLINE
    message: str = ""
    temperatures: Mapping[str, Temperature] = field(default_factory=dict)
    position: Mapping[str, float] = field(default_factory=dict)  # work position, mm
    machine_position: Mapping[str, float] = field(default_factory=dict)  # mm
    feed_mm_min: float | None = None
    spindle_rpm: float | None = None
    firmware: str | None = None
    progress: Progress | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # driver-specific fields
    updated_at: float = field(default_factory=time.time)

    def evolve(self, **changes: Any) -> Status:
        """Return a copy with some fields changed and a fresh timestamp."""
        changes.setdefault("updated_at", time.time())
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "state": self.state.value,
            "message": self.message,
            "temperatures": {
                k: {"actual": t.actual, "target": t.target} for k, t in self.temperatures.items()
            },
            "position": dict(self.position),
            "machine_position": dict(self.machine_position),
            "feed_mm_min": self.feed_mm_min,
            "spindle_rpm": self.spindle_rpm,
            "firmware": self.firmware,
            "progress": self.progress.as_dict() if self.progress else None,
            "extra": dict(self.extra),
            "updated_at": self.updated_at,
        }


class EventKind(StrEnum):
    """What an event on a driver's stream reports."""

    STATUS = "status"  # a new status snapshot
    LOG = "log"  # a line from the machine worth showing (echo:, [MSG:], ...)
    STARTED = "started"
    PAUSED = "paused"
    RESUMED = "resumed"
    FINISHED = "finished"  # the program ran to its end
    FAILED = "failed"  # the program stopped on an error; data["reason"]
    CANCELLED = "cancelled"
    DISCONNECTED = "disconnected"  # the link is gone; data["reason"]
    ACTION = "action"  # a firmware //action: request; data["action"]


@dataclass(frozen=True, slots=True)
class Event:
    """One item on a driver's event stream."""

    kind: EventKind
    data: Mapping[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class Program:
    """A G-code program ready to stream: comments and blank lines removed.

    `lines` is a sequence: a tuple for programs built from text, a `FileLines` reading its
    file block by block for programs from files (a 200 MiB job is not held in memory).
    """

    name: str
    lines: Sequence[str]
    source: Path | None = None  # the original file, for drivers that upload files whole

    @classmethod
    def from_text(cls, name: str, text: str, source: Path | None = None) -> Program:
        """Build a program from G-code text, dropping comments and blank lines."""
        return cls(name=name, lines=tuple(clean_lines(text.splitlines())), source=source)

    @classmethod
    def from_file(cls, path: Path, name: str | None = None) -> Program:
        """Open a G-code file (UTF-8) as a program streamed from disk (one pass to index it;
        call it in a worker thread)."""
        return cls(name=name or path.name, lines=FileLines(path), source=path)


class FileLines(Sequence[str]):
    """The command lines of a G-code file, read from disk a block at a time.

    Building it reads the file once, in 1 MiB slices, to count the command lines and to note
    where every `BLOCK` lines begin (a 200 MiB file of 6 million lines keeps about 1,500
    offsets). Indexing reads the block holding the line, keeping the last `CACHED` blocks:
    drivers stream forwards and resend only recent lines, so each block is read about once.
    A block read is 4,096 lines (about 100 KB from the page cache, well under a millisecond),
    so the drivers may index it on the event loop. The lines are those `from_text` gives:
    comments and blank lines dropped, any line break (\\n, \\r\\n, \\r) splits.
    """

    BLOCK: ClassVar[int] = 4096
    CACHED: ClassVar[int] = 4
    _SLICE: ClassVar[int] = 1 << 20

    def __init__(self, path: Path) -> None:
        self.path = path
        # checkpoints[b] = (byte offset of the raw line holding line b*BLOCK, and how many
        # command lines of that raw line come before it)
        self._checkpoints: list[tuple[int, int]] = []
        self._count = 0
        self._cache: dict[int, list[str]] = {}
        for offset, cleaned in self._raw_lines(0):
            for skip, _line in enumerate(cleaned):
                if self._count % self.BLOCK == 0:
                    self._checkpoints.append((offset, skip))
                self._count += 1

    def _raw_lines(self, start: int) -> Iterator[tuple[int, list[str]]]:
        """Yield (offset, command lines) for each newline-ended piece of the file from `start`."""
        with self.path.open("rb") as fh:
            fh.seek(start)
            offset = start
            rest = b""
            while True:
                block = fh.read(self._SLICE)
                data = rest + block
                if not data:
                    return
                pieces = data.split(b"\n")
                rest = pieces.pop() if block else b""
                for piece in pieces:
                    yield offset, clean_lines(piece.decode("utf-8").splitlines())
                    offset += len(piece) + 1
                if not block:
                    if rest:
                        yield offset, clean_lines(rest.decode("utf-8").splitlines())
                    return

    def _block(self, number: int) -> list[str]:
        cached = self._cache.get(number)
        if cached is not None:
            return cached
        offset, skip = self._checkpoints[number]
        want = min(self.BLOCK, self._count - number * self.BLOCK)
        lines: list[str] = []
        for _offset, cleaned in self._raw_lines(offset):
            lines.extend(cleaned[skip:])
            skip = 0
            if len(lines) >= want:
                break
        del lines[want:]
        if len(self._cache) >= self.CACHED:
            self._cache.pop(next(iter(self._cache)))  # the oldest read
        self._cache[number] = lines
        return lines

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("program line index out of range")
        return self._block(index // self.BLOCK)[index % self.BLOCK]

    def __iter__(self) -> Iterator[str]:
        for _offset, cleaned in self._raw_lines(0):
            yield from cleaned

    def __repr__(self) -> str:
        return f"FileLines({str(self.path)!r}, {self._count} lines)"


def strip_comment(line: str) -> str:
    """Remove `;` comments and `( ... )` comments from one G-code line."""
    if ";" in line:
        line = line.split(";", 1)[0]
    if "(" in line:
        out: list[str] = []
        depth = 0
        for ch in line:
            if ch == "(":
                depth += 1
            elif ch == ")" and depth:
                depth -= 1
            elif not depth:
                out.append(ch)
        line = "".join(out)
    return line.strip()


def clean_lines(lines: Iterable[str]) -> list[str]:
    """Strip comments and whitespace and drop empty lines."""
    out = []
    for raw in lines:
        line = strip_comment(raw)
        if line and line != "%":
            out.append(line)
    return out


# ---------------------------------------------------------------------------
# Errors. Drivers translate pyserial, requests and octorest exceptions into these
# at the boundary, with a message an operator can act on.


class DriverError(Exception):
    """A machine could not do what was asked; the message says why, for an operator."""


class MachineOffline(DriverError):
    """The machine cannot be reached: unplugged, powered off, wrong port or URL."""


class AuthFailed(DriverError):
    """The machine's server refused our credentials (a wrong or revoked API key)."""


class ProtocolError(DriverError):
    """The machine answered something we cannot make sense of, or stopped answering."""


class FirmwareError(DriverError):
    """The firmware reported a fault (thermal runaway, kill, alarm); nothing more is sent."""


class MachineBusy(DriverError):
    """The machine is running a program and cannot take this command now."""


class ProgramRefused(DriverError):
    """The machine's server refuses this program itself (its upload: a size, name or place it
    will not take); trying the same program again would be refused again."""


class UnknownDriver(DriverError):
    """No driver has this name."""


# ---------------------------------------------------------------------------


T = TypeVar("T")


class EventHub(Generic[T]):
    """Fan-out of items (driver events, or any other) to subscribers, each with a bounded queue."""

    def __init__(self, maxsize: int = 1000) -> None:
        self._queues: set[asyncio.Queue[T]] = set()
        self._maxsize = maxsize

    def publish(self, event: T) -> None:
        """Deliver an item to every subscriber; a full subscriber loses its oldest item."""
        for q in self._queues:
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(event)

    async def subscribe(self) -> AsyncIterator[T]:
        """Yield items as they come, until the caller stops iterating."""
        q: asyncio.Queue[T] = asyncio.Queue(self._maxsize)
        self._queues.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._queues.discard(q)


class Driver(ABC):
    """One async interface, several implementations (marlin, grbl, octoprint, ...)."""

    #: the name machines are configured with; see drivers.registry
    name: ClassVar[str]
    #: connection settings that are secrets and never returned in full
    secret_fields: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        self._status = Status()
        self._events: EventHub[Event] = EventHub()

    # -- status and events ------------------------------------------------------

    async def status(self) -> Status:
        """Return the latest status snapshot."""
        return self._status

    def events(self) -> AsyncIterator[Event]:
        """Subscribe to this driver's events (status changes, progress, job end)."""
        return self._events.subscribe()

    def _set_status(self, **changes: Any) -> Status:
        self._status = self._status.evolve(**changes)
        self._events.publish(Event(EventKind.STATUS, {"status": self._status}))
        return self._status

    def _emit(self, kind: EventKind, **data: Any) -> None:
        self._events.publish(Event(kind, data))

    # -- the interface -----------------------------------------------------------

    @abstractmethod
    async def connect(self) -> None:
        """Open the link and handshake; raise MachineOffline if the machine is not there."""

    @abstractmethod
    async def close(self) -> None:
        """Close the link; safe to call twice."""

    @abstractmethod
    async def start(self, program: Program) -> None:
        """Start running a program; returns once it is under way."""

    @abstractmethod
    async def pause(self) -> None:
        """Pause the running program."""

    @abstractmethod
    async def resume(self) -> None:
        """Resume a paused program."""

    @abstractmethod
    async def cancel(self) -> None:
        """Stop the running program safely."""

    @abstractmethod
    async def emergency_stop(self) -> None:
        """Stop the machine now (M112, GRBL reset): the operator will need to recover it."""

    @abstractmethod
    async def send(self, command: str) -> list[str]:
        """Send one command outside a program and return the machine's reply lines."""

    async def reset(self) -> str:
        """Recover after an emergency stop or a firmware halt; return a note for the operator.

        By default the link is closed and opened again: opening a serial port raises DTR,
        which resets the boards most printers use (an Arduino-style auto-reset), so a halted
        firmware boots afresh. Drivers whose firmware resets another way override this.
        """
        await self.close()
        await self.connect()
        return "reconnected: the controller was reset"
