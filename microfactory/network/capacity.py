"""Free machine-hours and queue waits for the next days: pure functions, no database.

The model, per machine:
- its free time is the shop's opening hours (bookings/hours.py: local wall-clock hours,
  closures, daylight-saving days of 23 or 25 hours) less its bookings (with their cleaning
  buffers) and maintenance blocks; a disabled machine, or one flagged in maintenance, has none;
- the queued work then uses that free time from the front, soonest first: first the work
  already on the machine (the rest of the running job, jobs assigned or pinned to it), then
  the shop-wide queue, in queue order, each job on the machine of its process (and material)
  that comes free first, which is how the matcher will hand them out;
- what remains is the machine's free time. `free_hours` sums it per local day, process and
  material over the machines that can work the material; the wait of a process is how long
  until its first machine comes free.

Queued work is counted against open hours only: a print left running overnight is not
counted against the night. That overstates the cost of the queue a little for printers, and
is exact for machines that need a person present (lasers, mills).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from microfactory.bookings import hours

Interval = tuple[dt.datetime, dt.datetime]
ANY_MATERIAL = "*"  # machines that list no materials are counted under this name
HORIZON_DAYS = 7


@dataclass(frozen=True)
class MachineTime:
    """What the computation needs to know about one machine."""

    id: int
    process: str  # fdm_printing, cnc_milling, laser_cutting
    materials: frozenset[str] = frozenset()  # empty: any (counted as ANY_MATERIAL)
    usable: bool = True  # enabled and not flagged in maintenance
    busy: tuple[Interval, ...] = ()  # bookings (to occupied_until) and maintenance blocks
    own_work_s: float = 0.0  # running remainder + jobs assigned or pinned to this machine


@dataclass(frozen=True)
class QueuedWork:
    """A queued job not pinned to a machine."""

    process: str
    duration_s: float
    material: str | None = None


@dataclass(frozen=True)
class DayHours:
    """Free hours of one local day, process and material."""

    date: dt.date
    process: str
    material: str
    hours: float


@dataclass(frozen=True)
class ProcessQueue:
    """Queue depth and the wait until a machine of the process comes free."""

    process: str
    depth: int
    wait_hours: float


@dataclass
class Capacity:
    """The computation's answer."""

    free: list[DayHours] = field(default_factory=list)
    queue: list[ProcessQueue] = field(default_factory=list)
    machine_free_s: dict[int, float] = field(default_factory=dict)  # over the whole horizon


def subtract(spans: Sequence[Interval], holes: Iterable[Interval]) -> list[Interval]:
    """Return `spans` with every part covered by `holes` removed (either may be unsorted).

    One sweep over both sorted lists: a machine's week of bookings against its open hours
    is linear, not spans × holes.
    """
    merged = hours.merge(holes)
    out: list[Interval] = []
    k = 0
    for start, end in sorted(spans):
        while k < len(merged) and merged[k][1] <= start:
            k += 1  # holes wholly before this span (spans are sorted: before the next ones too)
        cursor, h = start, k
        while h < len(merged) and merged[h][0] < end:
            h_start, h_end = merged[h]
            if h_start > cursor:
                out.append((cursor, h_start))
            cursor = max(cursor, h_end)
            if cursor >= end:
                break
            h += 1
        if cursor < end:
            out.append((cursor, end))
    return out


def consume(spans: list[Interval], seconds: float) -> list[Interval]:
    """Return `spans` after using `seconds` of them from the front."""
    left = seconds
    out = list(spans)
    while out and left > 0:
        start, end = out[0]
        length = (end - start).total_seconds()
        if length <= left:
            left -= length
            out.pop(0)
        else:
            out[0] = (start + dt.timedelta(seconds=left), end)
            left = 0
    return out


def day_bounds(day: dt.date, tz: ZoneInfo) -> Interval:
    """Return the UTC instants of a local day's start and end (23 or 25 hours on DST days)."""
    return hours.local_datetime(day, 0, tz), hours.local_datetime(day, hours.DAY_MINUTES, tz)


def _seconds_within(spans: Iterable[Interval], window: Interval) -> float:
    lo, hi = window
    return sum(max((min(e, hi) - max(s, lo)).total_seconds(), 0.0) for s, e in spans)


def _works(machine: MachineTime, material: str | None) -> bool:
    return not material or not machine.materials or material in machine.materials


def compute(
    *,
    machines: Sequence[MachineTime],
    queued: Sequence[QueuedWork],
    weekly: Sequence[tuple[int, int, int]],
    closures: Sequence[tuple[dt.date, dt.date]],
    tz: ZoneInfo,
    now: dt.datetime,
    depth: dict[str, int] | None = None,
    days: int = HORIZON_DAYS,
) -> Capacity:
    """Compute free hours per local day, process and material, and the wait per process.

    Days are today (from `now` on) and the `days - 1` local days after it. `depth` gives the
    number of jobs waiting per process (queued or assigned); it defaults to `queued`'s.
    """
    now = now.astimezone(dt.UTC)
    today = now.astimezone(tz).date()
    dates = [today + dt.timedelta(days=i) for i in range(days)]
    horizon_end = day_bounds(dates[-1], tz)[1]
    open_spans = hours.open_intervals(
        weekly=weekly, closures=closures, tz=tz, start=now, end=horizon_end
    )
    free: dict[int, list[Interval]] = {}
    for m in machines:
        spans = subtract(open_spans, m.busy) if m.usable else []
        free[m.id] = consume(spans, m.own_work_s)
    for work in queued:
        candidates = [m for m in machines if m.usable and m.process == work.process]
        candidates = [m for m in candidates if _works(m, work.material) and free[m.id]]
        if not candidates:
            continue  # no machine with time in the horizon: it waits beyond it
        first = min(candidates, key=lambda m: (free[m.id][0][0], m.id))
        free[first.id] = consume(free[first.id], work.duration_s)

    result = Capacity()
    processes = sorted({m.process for m in machines})
    windows = [(d, day_bounds(d, tz)) for d in dates]
    # Each machine's free seconds per day, once; then summed per process and material.
    per_day = {m.id: [_seconds_within(free[m.id], w) for _, w in windows] for m in machines}
    for i, (d, _) in enumerate(windows):
        for process in processes:
            group = [m for m in machines if m.process == process]
            materials = sorted({x for m in group for x in m.materials})
            if any(not m.materials for m in group):
                materials.append(ANY_MATERIAL)
            for material in materials:
                seconds = sum(
                    per_day[m.id][i]
                    for m in group
                    if (material in m.materials) or (material == ANY_MATERIAL and not m.materials)
                )
                result.free.append(DayHours(d, process, material, round(seconds / 3600, 2)))
    counts = depth if depth is not None else {}
    if depth is None:
        for work in queued:
            counts[work.process] = counts.get(work.process, 0) + 1
    horizon_h = (horizon_end - now).total_seconds() / 3600
    for process in processes:
        starts = [free[m.id][0][0] for m in machines if m.process == process and free[m.id]]
        wait = (min(starts) - now).total_seconds() / 3600 if starts else horizon_h
        result.queue.append(ProcessQueue(process, counts.get(process, 0), round(wait, 2)))
    result.machine_free_s = {
        m.id: sum((e - s).total_seconds() for s, e in free[m.id]) for m in machines
    }
    return result
