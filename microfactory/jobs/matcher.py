"""The shop-wide queue's matcher: which queued job goes to which idle machine, and when.

Pure functions over small snapshots, so the rules are unit-tested without a database and
a decision over 1,000 jobs and 50 machines takes milliseconds (see bench/bench_queue.py).

Order: operator priority first; then weighted fair queueing across members. Each job gets
a virtual finish tag = the member's recent machine time + the estimated time of that
member's queued jobs up to and including this one. A member with 20 queued jobs therefore
interleaves with a member with one, instead of starving them (as FIFO would); heavy recent
users wait behind light ones.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

DEFAULT_JOB_S = 3600.0  # when a job has no estimate, assume an hour


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """What the matcher needs to know about a queued job."""

    id: int
    owner_id: int
    kind: str
    priority: int = 0
    created_at: dt.datetime = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    estimated_s: float | None = None
    size_mm: tuple[float, float, float] | None = None  # bbox extents
    nozzle_mm: float | None = None  # the nozzle it was sliced for
    material: str | None = None
    tags: frozenset[str] = frozenset()
    machine_id: int | None = None  # pinned to one machine
    heats: bool = False  # FDM: heats a hotend and bed at start (counts for staggering)
    max_hotend_c: float | None = None
    max_bed_c: float | None = None
    # (driver, why): firmwares that cannot take the program (a line too long for GRBL, ...)
    refused_by: tuple[tuple[str, str], ...] = ()

    @property
    def duration_s(self) -> float:
        """Return the estimate used for planning."""
        return self.estimated_s if self.estimated_s and self.estimated_s > 0 else DEFAULT_JOB_S


@dataclass(frozen=True, slots=True)
class MachineView:
    """What the matcher needs to know about a machine."""

    id: int
    kind: str
    volume_mm: tuple[float, float, float] | None = None
    nozzle_mm: float | None = None
    loaded_material: str | None = None
    tags: frozenset[str] = frozenset()
    idle: bool = True  # connected, idle, enabled, not in maintenance
    bed_clear: bool = True  # no finished/failed job waiting for its bed to be cleared
    heating: bool = False  # warming up now (counts against the staggered-start limit)
    max_hotend_c: float | None = None
    max_bed_c: float | None = None
    driver: str = ""


@dataclass(frozen=True, slots=True)
class Assignment:
    """Start this job on this machine."""

    job_id: int
    machine_id: int


@dataclass
class Decision:
    """The matcher's answer: assignments now, and why the others wait."""

    assignments: list[Assignment] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)  # job id -> reason


def incompatibility(job: QueuedJob, machine: MachineView) -> str | None:
    """Return why a machine can never run a job, or None if it can."""
    if job.machine_id is not None and job.machine_id != machine.id:
        return "pinned to another machine"
    if job.kind != machine.kind:
        return f"needs a {job.kind}"
    if job.size_mm is not None and machine.volume_mm is not None:
        (px, py, pz), (mx, my, mz) = job.size_mm, machine.volume_mm
        # X and Y may swap (a part can be rotated on the bed); Z cannot.
        fits_flat = (px <= mx and py <= my) or (py <= mx and px <= my)
        if not fits_flat:
            return "too big for the build volume"
        if pz > mz:
            return "too tall for the build volume"
    if job.nozzle_mm and machine.nozzle_mm and abs(job.nozzle_mm - machine.nozzle_mm) > 1e-6:
        return f"sliced for a {job.nozzle_mm} mm nozzle"
    if job.material and machine.loaded_material and job.material != machine.loaded_material:
        return f"needs {job.material} loaded"
    if job.material and not machine.loaded_material and job.kind == "fdm_printer":
        return f"needs {job.material} loaded"
    if not job.tags <= machine.tags:
        return "lacks tags " + ", ".join(sorted(job.tags - machine.tags))
    if job.max_hotend_c and machine.max_hotend_c and job.max_hotend_c > machine.max_hotend_c:
        return "hotend temperature above the machine's limit"
    if job.max_bed_c and machine.max_bed_c and job.max_bed_c > machine.max_bed_c:
        return "bed temperature above the machine's limit"
    for driver, why in job.refused_by:
        if driver == machine.driver:
            return why
    return None


def order_queue(jobs: Iterable[QueuedJob], recent_usage_s: dict[int, float]) -> list[QueuedJob]:
    """Order the queue: priority, then weighted fair share across members, then age."""
    by_member: dict[int, list[QueuedJob]] = defaultdict(list)
    for job in jobs:
        by_member[job.owner_id].append(job)
    tagged: list[tuple[int, float, dt.datetime, int, QueuedJob]] = []
    for member, member_jobs in by_member.items():
        member_jobs.sort(key=lambda j: (-j.priority, j.created_at, j.id))
        finish = recent_usage_s.get(member, 0.0)
        for job in member_jobs:
            finish += job.duration_s
            tagged.append((-job.priority, finish, job.created_at, job.id, job))
    tagged.sort(key=lambda t: t[:4])
    return [t[4] for t in tagged]


def decide(
    jobs: Sequence[QueuedJob],
    machines: Sequence[MachineView],
    *,
    recent_usage_s: dict[int, float] | None = None,
    max_heating: int | None = None,
    blocked: Callable[[QueuedJob, MachineView], str | None] | None = None,
) -> Decision:
    """Assign queued jobs to free machines.

    `blocked(job, machine)` reports a time-based reason (a member's booking of that machine
    during the job's run); `max_heating` caps machines warming up at once (staggered start,
    to protect the shop's breaker).
    """
    decision = Decision()
    free = [m for m in machines if m.idle and m.bed_clear]
    heating = sum(1 for m in machines if m.heating)
    taken: set[int] = set()
    for job in order_queue(jobs, recent_usage_s or {}):
        reasons: list[str] = []
        candidates = []
        for machine in free:
            if machine.id in taken:
                continue
            why = incompatibility(job, machine) or (blocked(job, machine) if blocked else None)
            if why is None:
                candidates.append(machine)
            else:
                reasons.append(why)
        if not candidates:
            decision.waiting[job.id] = _waiting_reason(job, machines, reasons)
            continue
        if job.heats and max_heating is not None and heating >= max_heating:
            decision.waiting[job.id] = (
                f"staggered start: {heating} machines are heating up (limit {max_heating})"
            )
            continue
        # Best fit: the smallest compatible machine keeps big machines free for big jobs.
        machine = min(candidates, key=lambda m: (_volume(m), m.id))
        taken.add(machine.id)
        if job.heats:
            heating += 1
        decision.assignments.append(Assignment(job.id, machine.id))
    return decision


def _volume(machine: MachineView) -> float:
    if machine.volume_mm is None:
        return float("inf")
    x, y, z = machine.volume_mm
    return x * y * z


def _waiting_reason(job: QueuedJob, machines: Sequence[MachineView], reasons: list[str]) -> str:
    compatible = [m for m in machines if incompatibility(job, m) is None]
    if not compatible:
        return "no machine in the shop can run this job"
    if reasons:
        return "waiting: " + sorted(set(reasons), key=reasons.index)[0]
    return "waiting for a compatible machine to be free"
