"""Periodic booking work: no-show release, suspensions, reminders.

Booked sessions become usage records in usage/scheduled.py (the usage log reads bookings;
bookings know nothing of usage).

Every task takes `now` and works from the database's state alone, so a run after a restart
catches up on whatever fell due meanwhile, and running a task twice changes nothing more.
"""

from __future__ import annotations

import datetime as dt
import logging
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.bookings import service
from microfactory.bookings.models import Booking, BookingStatus, Suspension
from microfactory.machines import service as machine_service
from microfactory.notifications import service as notification_service

log = logging.getLogger(__name__)


def _fmt(moment: dt.datetime, tz: ZoneInfo) -> str:
    return moment.astimezone(tz).strftime("%a %Y-%m-%d %H:%M %Z")


async def release_no_shows(
    *, session: AsyncSession, now: dt.datetime, tz: ZoneInfo
) -> list[Booking]:
    """Release bookings not checked in by the end of the grace period; suspend repeat no-shows."""
    policy = await service.get_policy(session=session)
    grace = dt.timedelta(minutes=policy.checkin_grace_minutes)
    result = await session.execute(
        select(Booking)
        .where(Booking.status == BookingStatus.BOOKED, Booking.start_at < now - grace)
        .order_by(Booking.start_at)
        .with_for_update(skip_locked=True)
    )
    released = list(result.scalars())
    for booking in released:
        booking.status = BookingStatus.NO_SHOW
        booking.released_at = now
        machine = await machine_service.get_or_raise(session=session, machine_id=booking.machine_id)
        await notification_service.enqueue(
            session=session,
            user_id=booking.user_id,
            kind="no_show",
            subject=f"Released (no check-in): {machine.name}, {_fmt(booking.start_at, tz)}",
            body=f"You did not check in to {machine.name} within {policy.checkin_grace_minutes} "
            "minutes of the start, so the slot was released for others and a no-show recorded.",
            booking_id=booking.id,
        )
    await session.flush()
    for user_id in sorted({b.user_id for b in released}):
        await _suspend_if_due(session, user_id, now, tz)
    if released:
        log.info("released %d no-show booking(s)", len(released))
    return released


async def _suspend_if_due(
    session: AsyncSession, user_id: int, now: dt.datetime, tz: ZoneInfo
) -> None:
    policy = await service.get_policy(session=session)
    if policy.suspension_days <= 0:
        return
    if await service.active_suspension(session=session, user_id=user_id, now=now) is not None:
        return
    # Count only no-shows since the last suspension ended, so one streak suspends once.
    last_end = await session.scalar(
        select(func.max(Suspension.ends_at)).where(Suspension.user_id == user_id)
    )
    since = now - dt.timedelta(days=policy.noshow_window_days)
    if last_end is not None and last_end > since:
        since = last_end
    count = await session.scalar(
        select(func.count(Booking.id)).where(
            Booking.user_id == user_id,
            Booking.status == BookingStatus.NO_SHOW,
            Booking.start_at >= since,
        )
    )
    if (count or 0) < policy.noshow_limit:
        return
    ends = now + dt.timedelta(days=policy.suspension_days)
    session.add(
        Suspension(
            user_id=user_id,
            starts_at=now,
            ends_at=ends,
            reason=f"{count} no-shows within {policy.noshow_window_days} days",
        )
    )
    await notification_service.enqueue(
        session=session,
        user_id=user_id,
        kind="suspended",
        subject=f"Booking suspended until {_fmt(ends, tz)}",
        body=f"You missed {count} bookings within {policy.noshow_window_days} days, so you "
        f"cannot book until {_fmt(ends, tz)}. Ask an operator if this is a mistake.",
    )
    await session.flush()


async def send_reminders(*, session: AsyncSession, now: dt.datetime, tz: ZoneInfo) -> list[Booking]:
    """Queue a reminder for bookings starting within the reminder lead time."""
    policy = await service.get_policy(session=session)
    if policy.reminder_minutes <= 0:
        return []
    result = await session.execute(
        select(Booking)
        .where(
            Booking.status == BookingStatus.BOOKED,
            Booking.reminded_at.is_(None),
            Booking.start_at > now,
            Booking.start_at <= now + dt.timedelta(minutes=policy.reminder_minutes),
        )
        .with_for_update(skip_locked=True)
    )
    due = list(result.scalars())
    for booking in due:
        booking.reminded_at = now
        machine = await machine_service.get_or_raise(session=session, machine_id=booking.machine_id)
        await notification_service.enqueue(
            session=session,
            user_id=booking.user_id,
            kind="reminder",
            subject=f"Reminder: {machine.name} at {_fmt(booking.start_at, tz)}",
            body=f"Your booking of {machine.name} starts {_fmt(booking.start_at, tz)}. Check in "
            f"within {policy.checkin_grace_minutes} minutes of the start.",
            booking_id=booking.id,
        )
    await session.flush()
    return due
