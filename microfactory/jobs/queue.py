"""The shop-wide queue: validation before queueing, and the matcher run against the database."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.analysis import commands as program_commands
from microfactory.bookings import service as booking_service
from microfactory.config import Settings
from microfactory.db import utcnow
from microfactory.errors import InvalidInputError
from microfactory.jobs import lifecycle
from microfactory.jobs.matcher import MachineView, QueuedJob, decide, incompatibility
from microfactory.jobs.models import ENDED_STATES, Job, JobState
from microfactory.machines import limits
from microfactory.machines.channel import StatusReader
from microfactory.machines.models import Machine, MachineKind
from microfactory.usage.models import UsageRecord

log = logging.getLogger("microfactory.queue")

PROCESS_KIND = {
    "fdm": MachineKind.FDM_PRINTER,
    "cnc": MachineKind.CNC_MILL,
    "laser": MachineKind.LASER_CUTTER,
}
HEATING_MARGIN_C = 5.0  # a heater this far below its target is still warming up


def _extents(analysis: dict[str, Any]) -> tuple[float, float, float] | None:
    bbox = analysis.get("bbox_mm")
    if not bbox:
        return None
    return (
        round(bbox["max_x"] - bbox["min_x"], 3),
        round(bbox["max_y"] - bbox["min_y"], 3),
        round(bbox["max_z"] - bbox["min_z"], 3),
    )


def queued_job(job: Job) -> QueuedJob:
    """Build the matcher's view of a job."""
    analysis = job.analysis or {}
    return QueuedJob(
        id=job.id,
        owner_id=job.owner_id,
        kind=job.machine_kind.value,
        priority=job.priority,
        created_at=job.created_at,
        estimated_s=analysis.get("estimated_time_s"),
        size_mm=_extents(analysis) if job.machine_kind is MachineKind.FDM_PRINTER else None,
        nozzle_mm=job.nozzle_diameter_mm,
        material=job.material,
        tags=frozenset(job.required_tags or []),
        machine_id=job.requested_machine_id,
        heats=job.machine_kind is MachineKind.FDM_PRINTER,
        max_hotend_c=analysis.get("max_hotend_c"),
        max_bed_c=analysis.get("max_bed_c"),
        refused_by=tuple(
            (driver, why)
            for driver in sorted(limits.GRBL_DRIVERS | limits.MARLIN_DRIVERS)
            if (why := limits.program_problem(analysis, driver))
        ),
    )


def machine_view(machine: Machine, status: dict[str, Any], bed_clear: bool = True) -> MachineView:
    """Build the matcher's view of a machine from the registry and its live status."""
    caps = machine.capabilities or {}
    volume = None
    if machine.build_volume_x_mm and machine.build_volume_y_mm and machine.build_volume_z_mm:
        volume = (machine.build_volume_x_mm, machine.build_volume_y_mm, machine.build_volume_z_mm)
    temps = status.get("temperatures") or {}
    heating = any(
        (t.get("target") or 0) > 0
        and t.get("actual", 0) < (t.get("target") or 0) - HEATING_MARGIN_C
        for t in temps.values()
    )
    return MachineView(
        id=machine.id,
        kind=machine.kind.value,
        volume_mm=volume,
        nozzle_mm=caps.get("nozzle_diameter_mm"),
        loaded_material=caps.get("loaded_material"),
        tags=frozenset(caps.get("tags") or []),
        idle=(
            machine.enabled
            and not machine.maintenance
            and machine.driver != "manual"
            and status.get("state") == "idle"
            and not status.get("job_id")
        ),
        bed_clear=bed_clear,
        heating=heating,
        max_hotend_c=caps.get("max_hotend_c"),
        max_bed_c=caps.get("max_bed_c"),
        driver=machine.driver,
    )


def _check_commands(
    analysis: dict[str, Any], kind: MachineKind, machines: list[Machine], allowed: bool
) -> None:
    """Refuse what is not G-code, lines too long, and commands outside the allow-list.

    See microfactory/analysis/commands.py; it replaces the deny-list of firmware commands.
    """
    firmwares = program_commands.firmwares_of(m.driver for m in machines if m.kind is kind)
    for firmware in firmwares or ["none"]:
        check = program_commands.check_program(analysis, firmware)
        if firmware == "none":  # manual machines only: no G-code reaches a controller
            why = check.not_gcode
        else:
            why = program_commands.refusal_message(check, allowed)
        if why:
            raise InvalidInputError(why)
    found = analysis.get("firmware_commands") or []
    if found and not allowed and not firmwares:
        first = found[0]
        raise InvalidInputError(
            f"line {first['line']}: {first['reason']}. Programs that change a machine's "
            "firmware settings need an operator's permission for this job "
            "(allow_firmware_commands)"
        )


def validate_job(
    *,
    analysis: dict[str, Any],
    kind: MachineKind,
    machines: list[Machine],
    allow_firmware_commands: bool,
    job_view: QueuedJob,
) -> None:
    """Refuse a job that no machine of the shop may run, with the reason (a 422).

    Checks the process against the machine kind, firmware-altering commands, the build
    volume, temperatures, nozzle, material and tags.
    """
    process = analysis.get("process")
    expected = PROCESS_KIND.get(str(process))
    if expected is not None and kind is not MachineKind.OTHER and expected is not kind:
        raise InvalidInputError(
            f"this G-code is a {process} program, but the job is for a "
            f"{kind.value.replace('_', ' ')}"
        )
    _check_commands(analysis, kind, machines, allow_firmware_commands)
    candidates = [m for m in machines if m.kind is kind]
    if not candidates:
        raise InvalidInputError(f"this shop has no {kind.value.replace('_', ' ')}")
    reasons = []
    for machine in candidates:
        why = incompatibility(job_view, machine_view(machine, {"state": "idle"}))
        if why is None or why == "pinned to another machine":
            if why is None:
                return
            continue
        reasons.append(f"{machine.name}: {why}")
    size = job_view.size_mm
    part = f" (the part is {size[0]:g} × {size[1]:g} × {size[2]:g} mm)" if size else ""
    raise InvalidInputError(
        f"no machine in this shop can run this job{part}: " + "; ".join(reasons)
    )


async def recent_usage(
    session: AsyncSession, since: dt.datetime, owners: set[int]
) -> dict[int, float]:
    """Return each member's machine seconds since a time (the fair-share weight)."""
    if not owners:
        return {}
    rows = await session.execute(
        select(UsageRecord.user_id, func.sum(UsageRecord.active_s))
        .where(UsageRecord.started_at >= since, UsageRecord.user_id.in_(owners))
        .group_by(UsageRecord.user_id)
    )
    return {int(uid): float(total or 0) for uid, total in rows.all()}


BlockedCheck = Callable[[QueuedJob, MachineView], str | None]


async def _booking_checker(
    session: AsyncSession, jobs: list[QueuedJob], machines: list[MachineView], now: dt.datetime
) -> BlockedCheck | None:
    """Return a check that refuses a machine a member has booked during the job's run."""
    conflicting = booking_service.conflicting_booking
    # One query per free machine, not per (job, machine) pair: with 1,000 queued jobs the
    # pairwise version made thousands of queries every pass. Each free machine's earliest
    # booking in the longest job's window decides most pairs; only a member's own booking
    # coming first needs the exact question.
    pairs = [
        (job, machine)
        for machine in machines
        if machine.idle and machine.bed_clear
        for job in jobs
        if incompatibility(job, machine) is None
    ]
    if not pairs:
        return None
    horizon = now + dt.timedelta(seconds=max(job.duration_s for job, _ in pairs))
    earliest = {
        machine.id: await conflicting(
            session=session, machine_id=machine.id, start=now, end=horizon, user_id=None
        )
        for machine in {m.id: m for _, m in pairs}.values()
    }
    reason = "the machine is booked by a member during the run"
    verdicts: dict[tuple[int, int], str | None] = {}
    for job, machine in pairs:
        first = earliest[machine.id]
        end = now + dt.timedelta(seconds=job.duration_s)
        if first is None or first.start_at >= end:
            continue
        if first.user_id != job.owner_id or await conflicting(
            session=session, machine_id=machine.id, start=now, end=end, user_id=job.owner_id
        ):
            verdicts[(job.id, machine.id)] = reason

    def blocked(job: QueuedJob, machine: MachineView) -> str | None:
        return verdicts.get((job.id, machine.id))

    return blocked


async def plan(
    *,
    session: AsyncSession,
    fleet: StatusReader,
    settings: Settings,
    now: dt.datetime | None = None,
) -> list[tuple[int, int]]:
    """Match queued jobs to free machines and mark them assigned; return (job, machine) pairs.

    The caller commits, then tells the supervisors to start (machines move after the commit).
    """
    now = now or utcnow()
    jobs = list(
        (
            await session.execute(
                select(Job).where(Job.state == JobState.QUEUED, Job.preparation == "ready")
            )
        ).scalars()
    )
    if not jobs:
        return []
    machines = list((await session.execute(select(Machine))).scalars())
    held = set(
        (
            await session.execute(
                select(Job.machine_id).where(
                    Job.machine_id.is_not(None),
                    Job.state.in_(
                        [*ENDED_STATES, JobState.ASSIGNED, JobState.RUNNING, JobState.PAUSED]
                    ),
                )
            )
        ).scalars()
    )
    views = [machine_view(m, fleet.status(m), bed_clear=m.id not in held) for m in machines]
    queued = [queued_job(j) for j in jobs]
    usage = await recent_usage(
        session,
        now - dt.timedelta(days=settings.fair_share_window_days),
        {j.owner_id for j in jobs},
    )
    blocked = await _booking_checker(session, queued, views, now)
    decision = decide(
        queued,
        views,
        recent_usage_s=usage,
        max_heating=settings.max_heating_machines,
        blocked=blocked,
    )
    by_id = {j.id: j for j in jobs}
    for job_id, reason in decision.waiting.items():
        waiting = by_id[job_id]
        if waiting.waiting_reason != reason[:300]:
            waiting.waiting_reason = reason[:300]
            lifecycle.announce_waiting(session=session, job=waiting)  # after the commit
    await session.flush()
    pairs = []
    for a in decision.assignments:
        try:
            await lifecycle.assign(
                session=session, job=a.job_id, machine_id=a.machine_id, actor=lifecycle.SYSTEM
            )
        except lifecycle.TransitionRefused:
            continue  # cancelled or dispatched by hand since we read the queue
        pairs.append((a.job_id, a.machine_id))
    return pairs
