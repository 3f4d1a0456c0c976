"""Booking rules: how a booking gets refused, checked in, cancelled or released.

Each refusal names its rule (`rule` in the JSON error) and says what to do. Conflicts are
impossible even under concurrent requests: PostgreSQL holds an exclusion constraint over
[start_at, occupied_until) per machine, and SQLite runs the check after taking the database's
write lock (plus a trigger that refuses an overlapping row). See migration 0003b.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import secrets
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.accounts.models import User
from microfactory.bookings import hours
from microfactory.bookings.models import (
    HOLDING_STATUSES,
    Booking,
    BookingLock,
    BookingPolicy,
    BookingStatus,
    CalendarToken,
    Certification,
    Closure,
    MachineProfile,
    MaintenanceBlock,
    OpeningHours,
    Quota,
    Suspension,
)
from microfactory.bookings.schemas import (
    BookingCreate,
    CertificationCreate,
    ClosureCreate,
    MaintenanceCreate,
    OpeningHoursUpdate,
    PolicyUpdate,
    ProfileUpdate,
)
from microfactory.db import utcnow
from microfactory.errors import (
    ConflictError,
    InvalidInputError,
    NotAuthenticatedError,
    NotFoundError,
    PermissionDeniedError,
)
from microfactory.machines import service as machine_service
from microfactory.machines.models import Machine, MachineKind
from microfactory.notifications import service as notification_service

# Statuses still waiting to happen or happening: the ones a cancellation or release acts on.
LIVE_STATUSES = (BookingStatus.BOOKED, BookingStatus.CHECKED_IN)
POLICY_DEFAULTS: dict[str, int] = {
    "horizon_days": 14,
    "cancel_cutoff_minutes": 120,
    "checkin_grace_minutes": 15,
    "max_future_bookings": 10,
    "reminder_minutes": 60,
    "noshow_limit": 3,
    "noshow_window_days": 30,
    "suspension_days": 14,
}
PROFILE_DEFAULTS: dict[str, Any] = {
    "slot_minutes": 15,
    "buffer_minutes": 0,
    "requires_training": False,
}


class BookingRuleError(PermissionDeniedError):
    """A booking rule refuses the caller (training, quota, horizon, suspension, cutoff)."""

    def __init__(self, rule: str, detail: str, **extra: Any) -> None:
        super().__init__(detail, rule=rule, **extra)


class NotCertifiedError(BookingRuleError):
    """The member lacks a valid training for the machine."""

    def __init__(self, detail: str) -> None:
        super().__init__("training", detail)


class SlotTakenError(ConflictError):
    """The time is not free: another booking, its buffer, maintenance or closing hours."""

    def __init__(self, rule: str, detail: str, **extra: Any) -> None:
        super().__init__(detail, rule=rule, **extra)


def is_staff(user: User) -> bool:
    """Return whether the user is an operator or admin (see User.is_staff)."""
    return user.is_staff


def _fmt(moment: dt.datetime, tz: ZoneInfo) -> str:
    return moment.astimezone(tz).strftime("%a %Y-%m-%d %H:%M %Z")


# -- policy and per-machine settings ---------------------------------------------------------


async def get_policy(*, session: AsyncSession) -> BookingPolicy:
    """Return the shop's booking rules (defaults until an operator changes them)."""
    policy = await session.get(BookingPolicy, 1)
    return policy if policy is not None else BookingPolicy(id=1, **POLICY_DEFAULTS)


async def update_policy(*, session: AsyncSession, policy_in: PolicyUpdate) -> BookingPolicy:
    """Change the shop's booking rules."""
    policy = await session.get(BookingPolicy, 1)
    if policy is None:
        policy = BookingPolicy(id=1, **POLICY_DEFAULTS)
        session.add(policy)
    for key, value in policy_in.model_dump(exclude_unset=True, exclude_none=True).items():
        setattr(policy, key, value)
    await session.flush()
    return policy


async def get_profile(*, session: AsyncSession, machine_id: int) -> MachineProfile:
    """Return a machine's booking settings (defaults until an operator changes them)."""
    profile = await session.get(MachineProfile, machine_id)
    if profile is not None:
        return profile
    machine = await session.get(Machine, machine_id)
    return MachineProfile(machine_id=machine_id, machine=machine, **PROFILE_DEFAULTS)


async def update_profile(
    *, session: AsyncSession, machine_id: int, profile_in: ProfileUpdate
) -> MachineProfile:
    """Change a machine's slot size, buffer, training requirement or power rating."""
    machine = await machine_service.get_or_raise(session=session, machine_id=machine_id)
    profile = await session.get(MachineProfile, machine_id)
    if profile is None:
        profile = MachineProfile(machine_id=machine_id, machine=machine, **PROFILE_DEFAULTS)
        session.add(profile)
    for key, value in profile_in.model_dump(exclude_unset=True).items():
        if value is not None or key == "power_w":
            setattr(profile, key, value)
    await session.flush()
    return profile


# -- opening hours ---------------------------------------------------------------------------


async def weekly_schedule(*, session: AsyncSession) -> list[tuple[int, int, int]]:
    """Return the weekly schedule as (weekday, open_minute, close_minute) rows."""
    result = await session.execute(
        select(OpeningHours.weekday, OpeningHours.open_minute, OpeningHours.close_minute).order_by(
            OpeningHours.weekday, OpeningHours.open_minute
        )
    )
    return [(int(w), int(o), int(c)) for w, o, c in result.all()]


async def closure_days(*, session: AsyncSession) -> list[tuple[dt.date, dt.date]]:
    """Return every closure as an inclusive (first_day, last_day) pair."""
    result = await session.execute(select(Closure.first_day, Closure.last_day))
    return [(a, b) for a, b in result.all()]


async def set_weekly_schedule(
    *, session: AsyncSession, hours_in: OpeningHoursUpdate
) -> list[tuple[int, int, int]]:
    """Replace the weekly schedule."""
    rows = [
        (i.weekday, hours.minute_of_day(i.opens), hours.minute_of_day(i.closes))
        for i in hours_in.intervals
    ]
    for weekday in range(7):
        spans = sorted((o, c) for w, o, c in rows if w == weekday)
        for (_, c1), (o2, _) in itertools.pairwise(spans):
            if o2 < c1:
                raise InvalidInputError(f"opening intervals overlap on weekday {weekday}")
    for row in (await session.execute(select(OpeningHours))).scalars():
        await session.delete(row)
    for weekday, open_minute, close_minute in rows:
        session.add(
            OpeningHours(weekday=weekday, open_minute=open_minute, close_minute=close_minute)
        )
    await session.flush()
    return await weekly_schedule(session=session)


async def list_closures(*, session: AsyncSession) -> list[Closure]:
    """Return every closure, soonest first."""
    return list((await session.execute(select(Closure).order_by(Closure.first_day))).scalars())


async def add_closure(*, session: AsyncSession, closure_in: ClosureCreate) -> Closure:
    """Close the shop for whole local days."""
    closure = Closure(**closure_in.model_dump())
    session.add(closure)
    await session.flush()
    return closure


async def remove_closure(*, session: AsyncSession, closure_id: int) -> None:
    """Remove a closure."""
    closure = await session.get(Closure, closure_id)
    if closure is None:
        raise NotFoundError(f"closure {closure_id} not found")
    await session.delete(closure)
    await session.flush()


# -- reading bookings ------------------------------------------------------------------------


async def get_visible(*, session: AsyncSession, booking_id: int, user: User) -> Booking:
    """Return a booking the caller may see (their own, or any for staff)."""
    booking = await session.get(Booking, booking_id)
    if booking is None or (booking.user_id != user.id and not is_staff(user)):
        raise NotFoundError(f"booking {booking_id} not found")
    return booking


async def list_bookings(
    *,
    session: AsyncSession,
    user: User,
    machine_id: int | None = None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    include_cancelled: bool = False,
    mine: bool = False,
) -> list[Booking]:
    """Return bookings: a member's own, or everyone's for staff, soonest first."""
    stmt = select(Booking).order_by(Booking.start_at, Booking.id)
    if mine or not is_staff(user):
        stmt = stmt.where(Booking.user_id == user.id)
    if machine_id is not None:
        stmt = stmt.where(Booking.machine_id == machine_id)
    if start is not None:
        stmt = stmt.where(Booking.end_at > start)
    if end is not None:
        stmt = stmt.where(Booking.start_at < end)
    if not include_cancelled:
        stmt = stmt.where(Booking.status.in_(HOLDING_STATUSES))
    return list((await session.execute(stmt.limit(1000))).scalars())


async def holding_bookings(
    *,
    session: AsyncSession,
    machine_id: int,
    start: dt.datetime,
    end: dt.datetime | None = None,
) -> list[Booking]:
    """Return the bookings holding a machine's time from `start` on (every member's)."""
    stmt = (
        select(Booking)
        .where(
            Booking.machine_id == machine_id,
            Booking.status.in_(HOLDING_STATUSES),
            Booking.occupied_until > start,
        )
        .order_by(Booking.start_at)
    )
    if end is not None:
        stmt = stmt.where(Booking.start_at < end)
    return list((await session.execute(stmt.limit(5000))).scalars())


async def busy_intervals(
    *, session: AsyncSession, machine_id: int, start: dt.datetime, end: dt.datetime, user: User
) -> list[dict[str, Any]]:
    """Return the taken time of a machine: bookings (anonymous unless the caller's) and blocks."""
    out: list[dict[str, Any]] = []
    result = await session.execute(
        select(Booking).where(
            Booking.machine_id == machine_id,
            Booking.status.in_(HOLDING_STATUSES),
            Booking.start_at < end,
            Booking.occupied_until > start,
        )
    )
    for b in result.scalars():
        mine = b.user_id == user.id
        shown = mine or is_staff(user)
        out.append(
            {
                "machine_id": machine_id,
                "start_at": b.start_at,
                "end_at": b.end_at,
                "kind": "booking",
                "booking_id": b.id if shown else None,
                "mine": mine,
            }
        )
        if b.occupied_until > b.end_at:
            out.append(
                {
                    "machine_id": machine_id,
                    "start_at": b.end_at,
                    "end_at": b.occupied_until,
                    "kind": "buffer",
                    "booking_id": None,
                    "mine": False,
                }
            )
    for block in await maintenance_overlapping(
        session=session, machine_id=machine_id, start=start, end=end
    ):
        out.append(
            {
                "machine_id": machine_id,
                "start_at": block.start_at,
                "end_at": block.end_at,
                "kind": "maintenance",
                "booking_id": None,
                "mine": False,
            }
        )
    out.sort(key=lambda i: (i["start_at"], i["kind"]))
    return out


async def availability(
    *, session: AsyncSession, machine_ids: Sequence[int], now: dt.datetime, user: User
) -> dict[int, dict[str, Any]]:
    """Say per machine whether it is booked (or in maintenance) now, and when it is next free.

    Contiguous bookings, buffers and maintenance blocks count as one stretch of taken time,
    so "free at" is when the machine can really be booked, not the end of the first booking.
    Returns {machine_id: {"busy": "booking" | "maintenance" | None, "mine": bool,
    "free_at": datetime | None, "next_taken_at": datetime | None}}, looking two weeks ahead.
    """
    horizon = now + dt.timedelta(days=14)
    out: dict[int, dict[str, Any]] = {}
    for machine_id in machine_ids:
        taken = await busy_intervals(
            session=session, machine_id=machine_id, start=now, end=horizon, user=user
        )
        info: dict[str, Any] = {"busy": None, "mine": False, "free_at": None, "next_taken_at": None}
        current = [t for t in taken if t["start_at"] <= now < t["end_at"]]
        if current:
            first = min(current, key=lambda t: t["kind"] != "maintenance")
            info["busy"] = "maintenance" if first["kind"] == "maintenance" else "booking"
            info["mine"] = any(t["mine"] for t in current)
            free_at = max(t["end_at"] for t in current)
            for t in taken:  # extend over whatever starts before the stretch ends
                if t["start_at"] <= free_at < t["end_at"]:
                    free_at = t["end_at"]
            info["free_at"] = free_at
        else:
            upcoming = [t["start_at"] for t in taken if t["start_at"] > now]
            info["next_taken_at"] = min(upcoming) if upcoming else None
        out[machine_id] = info
    return out


async def conflicting_booking(
    *,
    session: AsyncSession,
    machine_id: int,
    start: dt.datetime,
    end: dt.datetime,
    user_id: int | None = None,
) -> Booking | None:
    """Return the earliest live booking by another member that overlaps [start, end).

    A booking occupies its buffer (cleaning time) too. The job matcher asks this before it
    starts a job on a machine.
    """
    stmt = (
        select(Booking)
        .where(
            Booking.machine_id == machine_id,
            Booking.status.in_(LIVE_STATUSES),
            Booking.start_at < end,
            Booking.occupied_until > start,
        )
        .order_by(Booking.start_at)
        .limit(1)
    )
    if user_id is not None:
        stmt = stmt.where(Booking.user_id != user_id)
    return (await session.execute(stmt)).scalar_one_or_none()


# -- rules -----------------------------------------------------------------------------------


def _check_shape(
    start: dt.datetime, end: dt.datetime, slot_minutes: int, tz: ZoneInfo, now: dt.datetime
) -> None:
    if end < start:
        raise InvalidInputError("end is before start: send start < end", rule="shape")
    if end == start:
        raise InvalidInputError("a booking cannot be zero minutes long", rule="shape")
    for name, moment in (("start", start), ("end", end)):
        local = moment.astimezone(tz)
        minute = local.hour * 60 + local.minute
        if minute % slot_minutes or local.second or local.microsecond:
            raise InvalidInputError(
                f"{name} {local.strftime('%H:%M:%S')} is not on this machine's "
                f"{slot_minutes}-minute slot grid: use times like :00, :{slot_minutes:02d}",
                rule="slot",
            )
    if start < now:
        raise InvalidInputError(
            f"start {_fmt(start, tz)} is in the past: book a time from now on", rule="past"
        )


async def active_suspension(
    *, session: AsyncSession, user_id: int, now: dt.datetime
) -> Suspension | None:
    """Return the member's suspension in force at `now`, if any."""
    result = await session.execute(
        select(Suspension)
        .where(
            Suspension.user_id == user_id,
            Suspension.lifted_at.is_(None),
            Suspension.starts_at <= now,
            Suspension.ends_at > now,
        )
        .order_by(Suspension.ends_at.desc())
        .limit(1)
    )
    return result.scalar_one_or_none()


async def valid_certification(
    *, session: AsyncSession, user_id: int, machine: Machine, at: dt.datetime
) -> Certification | None:
    """Return a certification covering this machine (itself or its kind) valid at `at`."""
    result = await session.execute(
        select(Certification)
        .where(
            Certification.user_id == user_id,
            Certification.revoked_at.is_(None),
            or_(Certification.machine_id == machine.id, Certification.machine_kind == machine.kind),
            or_(Certification.expires_at.is_(None), Certification.expires_at >= at),
        )
        .limit(1)
    )
    return result.scalar_one_or_none()


async def maintenance_overlapping(
    *, session: AsyncSession, machine_id: int, start: dt.datetime, end: dt.datetime
) -> list[MaintenanceBlock]:
    """Return the maintenance blocks of a machine overlapping [start, end)."""
    result = await session.execute(
        select(MaintenanceBlock)
        .where(
            MaintenanceBlock.machine_id == machine_id,
            MaintenanceBlock.removed_at.is_(None),
            MaintenanceBlock.start_at < end,
            MaintenanceBlock.end_at > start,
        )
        .order_by(MaintenanceBlock.start_at)
    )
    return list(result.scalars())


async def booked_hours(
    *, session: AsyncSession, user_id: int, kind: MachineKind, start: dt.datetime, end: dt.datetime
) -> float:
    """Return the hours a member holds on machines of a kind, for bookings starting in a span."""
    result = await session.execute(
        select(Booking.start_at, Booking.end_at)
        .join(Machine, Machine.id == Booking.machine_id)
        .where(
            Booking.user_id == user_id,
            Machine.kind == kind,
            Booking.status.in_(HOLDING_STATUSES),
            Booking.start_at >= start,
            Booking.start_at < end,
        )
    )
    return sum((e - s).total_seconds() for s, e in result.all()) / 3600.0


async def _serialise(session: AsyncSession, machine_id: int, user_id: int) -> None:
    """Make the rule checks that follow race-free against concurrent bookings."""
    bind = session.get_bind()
    if bind.dialect.name == "sqlite":
        # The first write of a SQLite transaction takes the database-wide write lock (waiting
        # up to the busy timeout), so everything after it reads the latest committed bookings
        # and no other booking can commit until this transaction ends.
        stmt = sqlite_insert(BookingLock).values(machine_id=machine_id, version=1)
        stmt = stmt.on_conflict_do_update(
            index_elements=[BookingLock.machine_id], set_={"version": BookingLock.version + 1}
        )
        await session.execute(stmt)
    else:
        # PostgreSQL: the exclusion constraint settles overlaps; locking the member's row makes
        # their quota and future-booking count exact when they book two machines at once.
        await session.execute(select(User.id).where(User.id == user_id).with_for_update())


async def create(
    *,
    session: AsyncSession,
    booking_in: BookingCreate,
    member: User,
    tz: ZoneInfo,
    now: dt.datetime | None = None,
) -> Booking:
    """Book a machine for a member, enforcing every rule of the shop."""
    now = now or utcnow()
    start = booking_in.start.astimezone(dt.UTC)
    end = booking_in.end.astimezone(dt.UTC)
    owner = member
    if booking_in.user_id is not None and booking_in.user_id != member.id:
        if not is_staff(member):
            raise PermissionDeniedError("only operators can book for another member")
        owner = await session.get(User, booking_in.user_id) or _missing_user(booking_in.user_id)
    machine = await machine_service.get_or_raise(session=session, machine_id=booking_in.machine_id)
    profile = await get_profile(session=session, machine_id=machine.id)
    _check_shape(start, end, profile.slot_minutes, tz, now)
    if not machine.enabled:
        raise SlotTakenError("disabled", f"machine {machine.name!r} is disabled: pick another")
    if machine.maintenance:
        raise SlotTakenError(
            "maintenance",
            f"machine {machine.name!r} is in maintenance: pick another machine or ask an operator",
        )

    await _serialise(session, machine.id, owner.id)
    policy = await get_policy(session=session)
    exempt = is_staff(owner)  # operators keep the shop running: no training, quota or limits

    if not exempt:
        suspension = await active_suspension(session=session, user_id=owner.id, now=now)
        if suspension is not None:
            raise BookingRuleError(
                "suspension",
                f"booking is suspended until {_fmt(suspension.ends_at, tz)} ({suspension.reason}):"
                " ask an operator to lift it",
            )
    horizon = now + dt.timedelta(days=policy.horizon_days)
    if end > horizon:
        raise BookingRuleError(
            "horizon",
            f"bookings open {policy.horizon_days} days ahead: end by {_fmt(horizon, tz)}",
        )
    weekly = await weekly_schedule(session=session)
    closures = await closure_days(session=session)
    if not hours.is_open_throughout(weekly=weekly, closures=closures, tz=tz, start=start, end=end):
        raise SlotTakenError(
            "opening_hours",
            f"the shop is not open for all of {_fmt(start, tz)} to {_fmt(end, tz)}: "
            "book within opening hours",
        )
    blocks = await maintenance_overlapping(
        session=session, machine_id=machine.id, start=start, end=end
    )
    if blocks:
        raise SlotTakenError(
            "maintenance",
            f"machine {machine.name!r} is blocked for maintenance from "
            f"{_fmt(blocks[0].start_at, tz)} to {_fmt(blocks[0].end_at, tz)}: pick another time",
        )
    if not exempt:
        if profile.requires_training and not await valid_certification(
            session=session, user_id=owner.id, machine=machine, at=end
        ):
            raise NotCertifiedError(
                f"machine {machine.name!r} needs a training valid until {_fmt(end, tz)}: "
                "ask an operator to certify you"
            )
        held = await session.scalar(
            select(func.count(Booking.id)).where(
                Booking.user_id == owner.id,
                Booking.status == BookingStatus.BOOKED,
                Booking.end_at > now,
            )
        )
        if (held or 0) >= policy.max_future_bookings:
            raise BookingRuleError(
                "max_future_bookings",
                f"you already hold {held} upcoming bookings (the limit is "
                f"{policy.max_future_bookings}): cancel one or wait until one has passed",
            )
        quota = await session.get(Quota, machine.kind)
        if quota is not None:
            week = hours.week_start(start, tz)
            week_end = hours.local_datetime(
                week.astimezone(tz).date() + dt.timedelta(days=7), 0, tz
            )
            used = await booked_hours(
                session=session, user_id=owner.id, kind=machine.kind, start=week, end=week_end
            )
            wanted = (end - start).total_seconds() / 3600.0
            if used + wanted > quota.hours_per_week + 1e-9:
                raise BookingRuleError(
                    "quota",
                    f"the weekly quota for {machine.kind.value.replace('_', ' ')}s is "
                    f"{quota.hours_per_week:g} h; you hold {used:g} h that week and asked for "
                    f"{wanted:g} h: book less or another week",
                )

    occupied_until = end + dt.timedelta(minutes=profile.buffer_minutes)
    await _refuse_overlap(session, machine, start, end, occupied_until, tz)
    booking = Booking(
        machine_id=machine.id,
        user_id=owner.id,
        start_at=start,
        end_at=end,
        occupied_until=occupied_until,
        status=BookingStatus.BOOKED,
        note=booking_in.note,
        created_at=now,
    )
    machine_name = machine.name  # a failed flush expires every loaded object
    session.add(booking)
    try:
        await session.flush()
    except IntegrityError:
        # The database refused an overlap the check above could not see (PostgreSQL, concurrent
        # transactions): the exclusion constraint or the SQLite trigger is the last word.
        raise SlotTakenError(
            "taken", f"machine {machine_name!r} was just booked for that time: pick another time"
        ) from None
    await notification_service.enqueue(
        session=session,
        user_id=owner.id,
        kind="booking_confirmed",
        subject=f"Booked: {machine.name}, {_fmt(start, tz)}",
        body=f"You booked {machine.name} from {_fmt(start, tz)} to {_fmt(end, tz)}. "
        "Check in within the grace period or the slot is released.",
        booking_id=booking.id,
    )
    return booking


def _missing_user(user_id: int) -> User:
    raise NotFoundError(f"user {user_id} not found")


async def _refuse_overlap(
    session: AsyncSession,
    machine: Machine,
    start: dt.datetime,
    end: dt.datetime,
    occupied_until: dt.datetime,
    tz: ZoneInfo,
) -> None:
    result = await session.execute(
        select(Booking)
        .where(
            Booking.machine_id == machine.id,
            Booking.status.in_(HOLDING_STATUSES),
            Booking.start_at < occupied_until,
            Booking.occupied_until > start,
        )
        .order_by(Booking.start_at)
        .limit(1)
    )
    other = result.scalar_one_or_none()
    if other is None:
        return
    if other.start_at < end and other.end_at > start:
        raise SlotTakenError(
            "taken",
            f"machine {machine.name!r} is already booked from {_fmt(other.start_at, tz)} to "
            f"{_fmt(other.end_at, tz)}: pick a free time",
        )
    gap = round((occupied_until - end).total_seconds() / 60) or round(
        (other.occupied_until - other.end_at).total_seconds() / 60
    )
    raise SlotTakenError(
        "buffer",
        f"machine {machine.name!r} needs {gap} minutes of cleaning time between bookings; "
        f"the neighbouring booking runs {_fmt(other.start_at, tz)} to {_fmt(other.end_at, tz)}: "
        "leave that gap",
    )


async def cancel(
    *,
    session: AsyncSession,
    booking_id: int,
    user: User,
    tz: ZoneInfo,
    reason: str | None = None,
    now: dt.datetime | None = None,
) -> Booking:
    """Cancel a booking: members until the cutoff, operators at any time; the record stays."""
    now = now or utcnow()
    booking = await get_visible(session=session, booking_id=booking_id, user=user)
    if booking.status not in LIVE_STATUSES:
        raise ConflictError(f"booking {booking.id} is already {booking.status.value}")
    if not is_staff(user):
        policy = await get_policy(session=session)
        cutoff = booking.start_at - dt.timedelta(minutes=policy.cancel_cutoff_minutes)
        if now > cutoff:
            raise BookingRuleError(
                "cancellation_cutoff",
                f"members can cancel until {policy.cancel_cutoff_minutes} minutes before the "
                f"start ({_fmt(cutoff, tz)}): ask an operator to cancel it",
            )
    booking.status = BookingStatus.CANCELLED
    booking.cancelled_at = now
    booking.cancelled_by_id = user.id
    booking.cancel_reason = reason
    await session.flush()
    if booking.user_id != user.id:
        machine = await machine_service.get_or_raise(session=session, machine_id=booking.machine_id)
        await notification_service.enqueue(
            session=session,
            user_id=booking.user_id,
            kind="booking_cancelled",
            subject=f"Cancelled by an operator: {machine.name}, {_fmt(booking.start_at, tz)}",
            body=f"Your booking of {machine.name} from {_fmt(booking.start_at, tz)} was "
            f"cancelled by {user.username}" + (f": {reason}" if reason else "."),
            booking_id=booking.id,
        )
    return booking


def checkin_window(booking: Booking, grace_minutes: int) -> tuple[dt.datetime, dt.datetime]:
    """Return when check-in opens and closes: the grace period either side of the start."""
    grace = dt.timedelta(minutes=grace_minutes)
    return booking.start_at - grace, min(booking.start_at + grace, booking.end_at)


async def check_in(
    *,
    session: AsyncSession,
    booking_id: int,
    user: User,
    tz: ZoneInfo,
    now: dt.datetime | None = None,
) -> Booking:
    """Check in to a booking within the grace period around its start."""
    now = now or utcnow()
    booking = await get_visible(session=session, booking_id=booking_id, user=user)
    if booking.status is BookingStatus.CHECKED_IN:
        return booking
    if booking.status is not BookingStatus.BOOKED:
        raise ConflictError(
            f"booking {booking.id} is {booking.status.value.replace('_', ' ')}: book again",
            rule="check_in",
        )
    policy = await get_policy(session=session)
    opens, closes = checkin_window(booking, policy.checkin_grace_minutes)
    if now < opens:
        raise ConflictError(
            f"check-in opens at {_fmt(opens, tz)} ({policy.checkin_grace_minutes} minutes before "
            "the start): come back then",
            rule="check_in",
        )
    if now > closes:
        raise ConflictError(
            f"check-in closed at {_fmt(closes, tz)}: the grace period is over and the slot is "
            "released; book again",
            rule="check_in",
        )
    booking.status = BookingStatus.CHECKED_IN
    booking.checked_in_at = now
    await session.flush()
    return booking


async def check_in_by_job(
    *, session: AsyncSession, user_id: int, machine_id: int, at: dt.datetime
) -> Booking | None:
    """Check a member in when they start a job on a machine they booked; return the booking."""
    policy = await get_policy(session=session)
    grace = dt.timedelta(minutes=policy.checkin_grace_minutes)
    result = await session.execute(
        select(Booking)
        .where(
            Booking.user_id == user_id,
            Booking.machine_id == machine_id,
            Booking.status.in_(LIVE_STATUSES),
            Booking.start_at <= at + grace,
            Booking.end_at > at,
        )
        .order_by(Booking.start_at)
    )
    for booking in result.scalars():
        if booking.status is BookingStatus.CHECKED_IN:
            return booking
        opens, closes = checkin_window(booking, policy.checkin_grace_minutes)
        if opens <= at <= closes:
            booking.status = BookingStatus.CHECKED_IN
            booking.checked_in_at = at
            await session.flush()
            return booking
    return None


# -- certifications, quotas, suspensions -----------------------------------------------------


async def grant_certification(
    *, session: AsyncSession, cert_in: CertificationCreate, operator: User
) -> Certification:
    """Certify a member for a machine or a machine kind."""
    if await session.get(User, cert_in.user_id) is None:
        raise NotFoundError(f"user {cert_in.user_id} not found")
    if cert_in.machine_id is not None:
        await machine_service.get_or_raise(session=session, machine_id=cert_in.machine_id)
    cert = Certification(
        user_id=cert_in.user_id,
        machine_id=cert_in.machine_id,
        machine_kind=cert_in.machine_kind,
        expires_at=cert_in.expires_at,
        note=cert_in.note,
        granted_by_id=operator.id,
        granted_at=utcnow(),
    )
    session.add(cert)
    await session.flush()
    return cert


async def revoke_certification(*, session: AsyncSession, cert_id: int) -> Certification:
    """Revoke a certification (kept for the record)."""
    cert = await session.get(Certification, cert_id)
    if cert is None:
        raise NotFoundError(f"certification {cert_id} not found")
    if cert.revoked_at is None:
        cert.revoked_at = utcnow()
    await session.flush()
    return cert


async def list_certifications(*, session: AsyncSession, user: User) -> list[Certification]:
    """Return certifications: a member's own, or everyone's for staff."""
    stmt = select(Certification).order_by(Certification.granted_at.desc(), Certification.id.desc())
    if not is_staff(user):
        stmt = stmt.where(Certification.user_id == user.id)
    return list((await session.execute(stmt)).scalars())


async def list_quotas(*, session: AsyncSession) -> list[Quota]:
    """Return the weekly quotas by machine kind."""
    return list((await session.execute(select(Quota).order_by(Quota.machine_kind))).scalars())


async def set_quota(
    *, session: AsyncSession, kind: MachineKind, hours_per_week: float | None
) -> Quota | None:
    """Set or remove the weekly quota of a machine kind."""
    quota = await session.get(Quota, kind)
    if hours_per_week is None:
        if quota is not None:
            await session.delete(quota)
            await session.flush()
        return None
    if quota is None:
        quota = Quota(machine_kind=kind, hours_per_week=hours_per_week)
        session.add(quota)
    else:
        quota.hours_per_week = hours_per_week
    await session.flush()
    return quota


async def list_suspensions(*, session: AsyncSession, user: User) -> list[Suspension]:
    """Return suspensions: a member's own, or everyone's for staff."""
    stmt = select(Suspension).order_by(Suspension.starts_at.desc())
    if not is_staff(user):
        stmt = stmt.where(Suspension.user_id == user.id)
    return list((await session.execute(stmt)).scalars())


async def lift_suspension(*, session: AsyncSession, suspension_id: int) -> Suspension:
    """Lift a suspension early."""
    suspension = await session.get(Suspension, suspension_id)
    if suspension is None:
        raise NotFoundError(f"suspension {suspension_id} not found")
    suspension.lifted_at = suspension.lifted_at or utcnow()
    await session.flush()
    return suspension


# -- maintenance -----------------------------------------------------------------------------


async def create_maintenance(
    *, session: AsyncSession, block_in: MaintenanceCreate, operator: User, tz: ZoneInfo
) -> tuple[MaintenanceBlock, list[Booking], list[Booking]]:
    """Block machine time; overlapping bookings are cancelled or kept as the operator says."""
    machine = await machine_service.get_or_raise(session=session, machine_id=block_in.machine_id)
    start, end = block_in.start.astimezone(dt.UTC), block_in.end.astimezone(dt.UTC)
    result = await session.execute(
        select(Booking)
        .where(
            Booking.machine_id == machine.id,
            Booking.status.in_(LIVE_STATUSES),
            Booking.start_at < end,
            Booking.end_at > start,
        )
        .order_by(Booking.start_at)
    )
    overlapping = list(result.scalars())
    if overlapping and block_in.on_conflict is None:
        raise ConflictError(
            f'{len(overlapping)} booking(s) overlap this block: send on_conflict "cancel" '
            '(the members are notified) or "keep"',
            rule="maintenance_overlap",
            bookings=[b.id for b in overlapping],
        )
    block = MaintenanceBlock(
        machine_id=machine.id,
        start_at=start,
        end_at=end,
        reason=block_in.reason,
        created_by_id=operator.id,
        created_at=utcnow(),
    )
    session.add(block)
    cancelled: list[Booking] = []
    kept: list[Booking] = []
    for booking in overlapping:
        if block_in.on_conflict == "keep":
            kept.append(booking)
            continue
        booking.status = BookingStatus.CANCELLED
        booking.cancelled_at = utcnow()
        booking.cancelled_by_id = operator.id
        booking.cancel_reason = f"maintenance: {block_in.reason}"[:200]
        cancelled.append(booking)
        await notification_service.enqueue(
            session=session,
            user_id=booking.user_id,
            kind="maintenance_cancelled",
            subject=f"Cancelled for maintenance: {machine.name}, {_fmt(booking.start_at, tz)}",
            body=f"Your booking of {machine.name} from {_fmt(booking.start_at, tz)} to "
            f"{_fmt(booking.end_at, tz)} was cancelled: the machine is blocked for maintenance"
            + (f" ({block_in.reason})" if block_in.reason else "")
            + ". Please book another time.",
            booking_id=booking.id,
        )
    await session.flush()
    return block, cancelled, kept


async def list_maintenance(
    *, session: AsyncSession, machine_id: int | None = None, include_past: bool = False
) -> list[MaintenanceBlock]:
    """Return the maintenance blocks in force, soonest first."""
    stmt = (
        select(MaintenanceBlock)
        .where(MaintenanceBlock.removed_at.is_(None))
        .order_by(MaintenanceBlock.start_at)
    )
    if machine_id is not None:
        stmt = stmt.where(MaintenanceBlock.machine_id == machine_id)
    if not include_past:
        stmt = stmt.where(MaintenanceBlock.end_at > utcnow())
    return list((await session.execute(stmt)).scalars())


async def remove_maintenance(*, session: AsyncSession, block_id: int) -> MaintenanceBlock:
    """Remove a maintenance block (kept for the record)."""
    block = await session.get(MaintenanceBlock, block_id)
    if block is None:
        raise NotFoundError(f"maintenance block {block_id} not found")
    block.removed_at = block.removed_at or utcnow()
    await session.flush()
    return block


# -- calendar feed tokens --------------------------------------------------------------------


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def new_feed_token(*, session: AsyncSession, user: User) -> tuple[str, CalendarToken]:
    """Create a member's private feed token, revoking the previous one; return its value."""
    await revoke_feed_tokens(session=session, user=user)
    value = "cal_" + secrets.token_urlsafe(24)
    record = CalendarToken(user_id=user.id, token_hash=_digest(value), prefix=value[:10])
    session.add(record)
    await session.flush()
    return value, record


async def revoke_feed_tokens(*, session: AsyncSession, user: User) -> None:
    """Revoke a member's feed tokens: calendar apps holding the old URL get a 401."""
    await session.execute(
        update(CalendarToken)
        .where(CalendarToken.user_id == user.id, CalendarToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


async def feed_token_of(*, session: AsyncSession, user: User) -> CalendarToken | None:
    """Return the member's feed token record in force, if any."""
    result = await session.execute(
        select(CalendarToken).where(
            CalendarToken.user_id == user.id, CalendarToken.revoked_at.is_(None)
        )
    )
    return result.scalars().first()


async def user_for_feed_token(*, session: AsyncSession, token: str) -> User:
    """Return the active member a feed token belongs to, or raise 401."""
    result = await session.execute(
        select(User)
        .join(CalendarToken, CalendarToken.user_id == User.id)
        .where(CalendarToken.token_hash == _digest(token), CalendarToken.revoked_at.is_(None))
    )
    user = result.scalar_one_or_none()
    if user is None or not user.is_active:
        raise NotAuthenticatedError("invalid or revoked calendar feed token: make a new feed URL")
    return user


async def machines_by_id(*, session: AsyncSession, ids: Sequence[int]) -> dict[int, Machine]:
    """Return machines by id."""
    if not ids:
        return {}
    result = await session.execute(select(Machine).where(Machine.id.in_(set(ids))))
    return {m.id: m for m in result.scalars()}
