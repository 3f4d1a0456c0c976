"""The usage log listens to the job lifecycle: every job run that ended is one record.

It subscribes to `job.ended` (published after the lifecycle's commit) and appends the run in a
transaction of its own, from the job's snapshot in the event, so usage needs nothing from the
jobs domain and a machine's supervisor needs nothing from usage.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory.events import EventBus, JobChanged
from microfactory.machines.models import Machine
from microfactory.usage import service as usage_service
from microfactory.usage.models import UsageRecord

log = logging.getLogger("microfactory.usage")

#: states a job ran in: only a run that reached the machine uses it
RAN_FROM = frozenset({"running", "paused"})


def material_g(event: JobChanged) -> float | None:
    """Estimate material used: the analysis total, pro rata of the lines run."""
    if not event.filament_g or not event.lines_total:
        return None
    if event.to_state == "finished":
        return round(event.filament_g, 2)
    share = min(1.0, (event.last_acked_line or 0) / event.lines_total)
    return round(event.filament_g * share, 2)


async def record_run(*, session: AsyncSession, event: JobChanged) -> UsageRecord | None:
    """Append the usage of the run that `event` ended, once (a repeat is ignored)."""
    if event.from_state not in RAN_FROM or event.machine_id is None:
        return None  # never started on a machine (cancelled in the queue, refused start)
    done = await session.scalar(
        select(UsageRecord.id).where(
            UsageRecord.job_id == event.job_id, UsageRecord.source == "job"
        )
    )
    if done is not None:
        return None
    ended = event.ended_at or event.at
    started = event.started_at or ended
    machine = await session.get(Machine, event.machine_id)
    loaded = (machine.capabilities or {}).get("loaded_material") if machine else None
    lines_sent = event.details.get("lines_sent", event.last_acked_line)
    return await usage_service.append(
        session=session,
        user_id=event.owner_id,
        machine_id=event.machine_id,
        job_id=event.job_id,
        source="job",
        started_at=started,
        ended_at=ended,
        active_s=(ended - started).total_seconds() - event.paused_s,
        outcome=event.to_state,
        lines_sent=lines_sent,
        material_kind=loaded,
        material_g=material_g(event),
        note=str(event.details.get("usage_note", "")),
    )


def subscribe(bus: EventBus, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Record usage when a job ends."""

    async def on_ended(event: JobChanged) -> None:
        async with sessionmaker() as session, session.begin():
            record = await record_run(session=session, event=event)
        if record is not None:
            log.info("usage of job %s recorded: %.0f s", event.job_id, record.active_s)

    bus.subscribe("job.ended", on_ended)
