"""Periodic usage work: a checked-in booking that ended becomes a usage record."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.bookings.models import Booking, BookingStatus
from microfactory.usage import service as usage_service
from microfactory.usage.models import UsageRecord


async def log_booked_sessions(*, session: AsyncSession, now: dt.datetime) -> list[UsageRecord]:
    """Append a usage record for each checked-in booking that has ended, then complete it.

    Time the member's own job runs already logged on that machine is left out, so one hour
    of machine time is never counted twice.
    """
    result = await session.execute(
        select(Booking)
        .where(Booking.status == BookingStatus.CHECKED_IN, Booking.end_at <= now)
        .with_for_update(skip_locked=True)
    )
    records = []
    for booking in result.scalars():
        started = max(booking.checked_in_at or booking.start_at, booking.start_at)
        started = min(started, booking.end_at)
        jobs = await session.execute(
            select(UsageRecord.started_at, UsageRecord.ended_at).where(
                UsageRecord.user_id == booking.user_id,
                UsageRecord.machine_id == booking.machine_id,
                UsageRecord.source == "job",
                UsageRecord.started_at < booking.end_at,
                UsageRecord.ended_at > started,
            )
        )
        covered = sum(
            (min(e, booking.end_at) - max(s, started)).total_seconds() for s, e in jobs.all()
        )
        span = (booking.end_at - started).total_seconds()
        records.append(
            await usage_service.append(
                session=session,
                user_id=booking.user_id,
                machine_id=booking.machine_id,
                booking_id=booking.id,
                source="booking",
                started_at=started,
                ended_at=booking.end_at,
                active_s=max(0.0, span - covered),
                outcome="finished",
                note=f"booking {booking.id}" + (" (job time logged separately)" if covered else ""),
            )
        )
        booking.status = BookingStatus.COMPLETED
    await session.flush()
    return records
