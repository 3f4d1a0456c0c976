"""Usage log rules: append only."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.machines.models import Machine
from microfactory.usage.models import UsageRecord


async def energy_estimate(
    *, session: AsyncSession, machine_id: int, active_s: float
) -> float | None:
    """Estimate energy in Wh from the machine's rated power, or None when it has none."""
    # Rated power x active time: an upper bound (heaters cycle), good enough to share costs.
    power_w = await session.scalar(select(Machine.power_w).where(Machine.id == machine_id))
    return None if power_w is None else round(power_w * active_s / 3600.0, 3)


async def append(
    *,
    session: AsyncSession,
    user_id: int,
    machine_id: int,
    source: str,
    started_at: dt.datetime,
    ended_at: dt.datetime,
    active_s: float,
    outcome: str,
    job_id: int | None = None,
    lines_sent: int | None = None,
    material_kind: str | None = None,
    material_g: float | None = None,
    note: str = "",
    booking_id: int | None = None,
    energy_wh: float | None = None,
) -> UsageRecord:
    """Append one usage record (the log is never updated or deleted)."""
    if energy_wh is None:
        energy_wh = await energy_estimate(
            session=session, machine_id=machine_id, active_s=max(0.0, active_s)
        )
    record = UsageRecord(
        user_id=user_id,
        machine_id=machine_id,
        job_id=job_id,
        source=source,
        started_at=started_at,
        ended_at=ended_at,
        active_s=max(0.0, active_s),
        lines_sent=lines_sent,
        material_kind=material_kind,
        material_g=material_g,
        outcome=outcome,
        note=note,
        booking_id=booking_id,
        energy_wh=energy_wh,
    )
    session.add(record)
    await session.flush()
    return record


async def for_job(*, session: AsyncSession, job_id: int) -> list[UsageRecord]:
    """Return the usage records of one job, oldest first."""
    result = await session.execute(
        select(UsageRecord).where(UsageRecord.job_id == job_id).order_by(UsageRecord.id)
    )
    return list(result.scalars())
