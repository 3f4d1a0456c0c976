"""Booking endpoints: thin wrappers around bookings.service."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import Response

from microfactory.bookings import calendar, service
from microfactory.bookings.deps import CalendarUser, Now, ShopTz
from microfactory.bookings.hours import format_minute
from microfactory.bookings.schemas import (
    BookingCreate,
    BookingRead,
    BusyInterval,
    CertificationCreate,
    CertificationRead,
    ClosureCreate,
    ClosureRead,
    FeedTokenCreated,
    MaintenanceCreate,
    MaintenanceRead,
    OpeningHoursUpdate,
    OpeningInterval,
    PolicyRead,
    PolicyUpdate,
    ProfileRead,
    ProfileUpdate,
    QuotaRead,
    QuotaSet,
    SuspensionRead,
)
from microfactory.deps import AnyUser, SessionDep, StaffUser
from microfactory.errors import InvalidInputError
from microfactory.machines import service as machine_service
from microfactory.machines.models import MachineKind
from microfactory.notifications import service as notification_service
from microfactory.notifications.schemas import NotificationRead, NotificationsMarked
from microfactory.types import Id, Timestamp

router = APIRouter(prefix="/api/v1", tags=["bookings"])
ICS = "text/calendar; charset=utf-8"
ICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/calendar": {"schema": {"type": "string"}}}}
}


@router.get("/bookings", response_model=list[BookingRead])
async def list_bookings(
    session: SessionDep,
    user: AnyUser,
    machine_id: Id | None = None,
    start: Timestamp | None = None,
    end: Timestamp | None = None,
    include_cancelled: bool = False,
    mine: bool = False,
) -> list[BookingRead]:
    """List bookings: a member's own, or everyone's for operators."""
    bookings = await service.list_bookings(
        session=session,
        user=user,
        machine_id=machine_id,
        start=start,
        end=end,
        include_cancelled=include_cancelled,
        mine=mine,
    )
    return [BookingRead.model_validate(b) for b in bookings]


@router.post("/bookings", response_model=BookingRead, status_code=status.HTTP_201_CREATED)
async def create_booking(
    booking_in: BookingCreate, session: SessionDep, user: AnyUser, tz: ShopTz, now: Now
) -> BookingRead:
    """Book a machine for [start, end); every shop rule is checked here."""
    booking = await service.create(
        session=session, booking_in=booking_in, member=user, tz=tz, now=now
    )
    return BookingRead.model_validate(booking)


@router.get("/bookings/availability", response_model=list[BusyInterval])
async def availability(
    session: SessionDep,
    user: AnyUser,
    machine_id: Id,
    start: Timestamp,
    end: Timestamp,
) -> list[BusyInterval]:
    """List a machine's taken time in a period (others' bookings stay anonymous)."""
    if end <= start or end - start > dt.timedelta(days=62):
        raise InvalidInputError("give start < end, at most 62 days apart")
    await machine_service.get_or_raise(session=session, machine_id=machine_id)
    items = await service.busy_intervals(
        session=session, machine_id=machine_id, start=start, end=end, user=user
    )
    return [BusyInterval.model_validate(i) for i in items]


@router.get("/bookings/{booking_id:int}", response_model=BookingRead)
async def get_booking(booking_id: Id, session: SessionDep, user: AnyUser) -> BookingRead:
    """Return one booking."""
    booking = await service.get_visible(session=session, booking_id=booking_id, user=user)
    return BookingRead.model_validate(booking)


@router.delete("/bookings/{booking_id:int}", response_model=BookingRead)
async def cancel_booking(
    booking_id: Id,
    session: SessionDep,
    user: AnyUser,
    tz: ShopTz,
    now: Now,
    reason: Annotated[str | None, Query(max_length=200)] = None,
) -> BookingRead:
    """Cancel a booking (members until the cutoff, operators any time); the record stays."""
    booking = await service.cancel(
        session=session, booking_id=booking_id, user=user, tz=tz, reason=reason, now=now
    )
    return BookingRead.model_validate(booking)


@router.post("/bookings/{booking_id:int}/check-in", response_model=BookingRead)
async def check_in(
    booking_id: Id, session: SessionDep, user: AnyUser, tz: ShopTz, now: Now
) -> BookingRead:
    """Check in to a booking within the grace period around its start."""
    booking = await service.check_in(
        session=session, booking_id=booking_id, user=user, tz=tz, now=now
    )
    return BookingRead.model_validate(booking)


# -- rules and settings ----------------------------------------------------------------------


@router.get("/booking-policy", response_model=PolicyRead)
async def get_policy(session: SessionDep, _user: AnyUser) -> PolicyRead:
    """Return the shop's booking rules."""
    return PolicyRead.model_validate(await service.get_policy(session=session))


@router.patch("/booking-policy", response_model=PolicyRead)
async def update_policy(
    policy_in: PolicyUpdate, session: SessionDep, _user: StaffUser
) -> PolicyRead:
    """Change the shop's booking rules (operators)."""
    return PolicyRead.model_validate(
        await service.update_policy(session=session, policy_in=policy_in)
    )


@router.get("/machines/{machine_id:int}/booking-profile", response_model=ProfileRead)
async def get_profile(machine_id: Id, session: SessionDep, _user: AnyUser) -> ProfileRead:
    """Return a machine's slot size, buffer, training requirement and power rating."""
    await machine_service.get_or_raise(session=session, machine_id=machine_id)
    return ProfileRead.model_validate(
        await service.get_profile(session=session, machine_id=machine_id)
    )


@router.patch("/machines/{machine_id:int}/booking-profile", response_model=ProfileRead)
async def update_profile(
    machine_id: Id, profile_in: ProfileUpdate, session: SessionDep, _user: StaffUser
) -> ProfileRead:
    """Change a machine's booking settings (operators)."""
    return ProfileRead.model_validate(
        await service.update_profile(session=session, machine_id=machine_id, profile_in=profile_in)
    )


def _intervals(rows: list[tuple[int, int, int]]) -> list[OpeningInterval]:
    return [
        OpeningInterval(weekday=w, opens=format_minute(o), closes=format_minute(c))
        for w, o, c in rows
    ]


@router.get("/opening-hours", response_model=OpeningHoursUpdate)
async def get_opening_hours(session: SessionDep, _user: AnyUser) -> OpeningHoursUpdate:
    """Return the weekly schedule in the shop's local time (empty: open around the clock)."""
    return OpeningHoursUpdate(intervals=_intervals(await service.weekly_schedule(session=session)))


@router.put("/opening-hours", response_model=OpeningHoursUpdate)
async def set_opening_hours(
    hours_in: OpeningHoursUpdate, session: SessionDep, _user: StaffUser
) -> OpeningHoursUpdate:
    """Replace the weekly schedule (operators)."""
    rows = await service.set_weekly_schedule(session=session, hours_in=hours_in)
    return OpeningHoursUpdate(intervals=_intervals(rows))


@router.get("/closures", response_model=list[ClosureRead])
async def list_closures(session: SessionDep, _user: AnyUser) -> list[ClosureRead]:
    """List the days the shop is closed."""
    return [ClosureRead.model_validate(c) for c in await service.list_closures(session=session)]


@router.post("/closures", response_model=ClosureRead, status_code=status.HTTP_201_CREATED)
async def add_closure(
    closure_in: ClosureCreate, session: SessionDep, _user: StaffUser
) -> ClosureRead:
    """Close the shop for whole days (operators)."""
    return ClosureRead.model_validate(
        await service.add_closure(session=session, closure_in=closure_in)
    )


@router.delete("/closures/{closure_id:int}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_closure(closure_id: Id, session: SessionDep, _user: StaffUser) -> Response:
    """Remove a closure (operators)."""
    await service.remove_closure(session=session, closure_id=closure_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/certifications", response_model=list[CertificationRead])
async def list_certifications(session: SessionDep, user: AnyUser) -> list[CertificationRead]:
    """List certifications: a member's own, or everyone's for operators."""
    certs = await service.list_certifications(session=session, user=user)
    return [CertificationRead.model_validate(c) for c in certs]


@router.post(
    "/certifications", response_model=CertificationRead, status_code=status.HTTP_201_CREATED
)
async def grant_certification(
    cert_in: CertificationCreate, session: SessionDep, user: StaffUser
) -> CertificationRead:
    """Certify a member for a machine or machine kind, optionally until a date (operators)."""
    cert = await service.grant_certification(session=session, cert_in=cert_in, operator=user)
    return CertificationRead.model_validate(cert)


@router.delete("/certifications/{cert_id:int}", response_model=CertificationRead)
async def revoke_certification(
    cert_id: Id, session: SessionDep, _user: StaffUser
) -> CertificationRead:
    """Revoke a certification (operators)."""
    return CertificationRead.model_validate(
        await service.revoke_certification(session=session, cert_id=cert_id)
    )


@router.get("/quotas", response_model=list[QuotaRead])
async def list_quotas(session: SessionDep, _user: AnyUser) -> list[QuotaRead]:
    """List the weekly quotas by machine kind."""
    return [QuotaRead.model_validate(q) for q in await service.list_quotas(session=session)]


@router.put("/quotas/{kind}", response_model=QuotaRead | None)
async def set_quota(
    kind: MachineKind, quota_in: QuotaSet, session: SessionDep, _user: StaffUser
) -> QuotaRead | None:
    """Set (or with null remove) the weekly hours per member on a machine kind (operators)."""
    quota = await service.set_quota(
        session=session, kind=kind, hours_per_week=quota_in.hours_per_week
    )
    return QuotaRead.model_validate(quota) if quota else None


@router.get("/suspensions", response_model=list[SuspensionRead])
async def list_suspensions(session: SessionDep, user: AnyUser) -> list[SuspensionRead]:
    """List booking suspensions: a member's own, or everyone's for operators."""
    return [
        SuspensionRead.model_validate(s)
        for s in await service.list_suspensions(session=session, user=user)
    ]


@router.delete("/suspensions/{suspension_id:int}", status_code=status.HTTP_204_NO_CONTENT)
async def lift_suspension(suspension_id: Id, session: SessionDep, _user: StaffUser) -> Response:
    """Lift a suspension early (operators)."""
    await service.lift_suspension(session=session, suspension_id=suspension_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- maintenance -----------------------------------------------------------------------------


@router.get("/maintenance-blocks", response_model=list[MaintenanceRead])
async def list_maintenance(
    session: SessionDep, _user: AnyUser, machine_id: Id | None = None
) -> list[MaintenanceRead]:
    """List upcoming maintenance blocks."""
    blocks = await service.list_maintenance(session=session, machine_id=machine_id)
    return [MaintenanceRead.model_validate(b) for b in blocks]


@router.post(
    "/maintenance-blocks", response_model=MaintenanceRead, status_code=status.HTTP_201_CREATED
)
async def create_maintenance(
    block_in: MaintenanceCreate, session: SessionDep, user: StaffUser, tz: ShopTz
) -> MaintenanceRead:
    """Block machine time (operators); overlapping bookings need on_conflict cancel or keep."""
    block, cancelled, kept = await service.create_maintenance(
        session=session, block_in=block_in, operator=user, tz=tz
    )
    read = MaintenanceRead.model_validate(block)
    read.cancelled_booking_ids = [b.id for b in cancelled]
    read.kept_booking_ids = [b.id for b in kept]
    return read


@router.delete("/maintenance-blocks/{block_id:int}", response_model=MaintenanceRead)
async def remove_maintenance(
    block_id: Id, session: SessionDep, _user: StaffUser
) -> MaintenanceRead:
    """Remove a maintenance block (operators)."""
    return MaintenanceRead.model_validate(
        await service.remove_maintenance(session=session, block_id=block_id)
    )


# -- notifications and calendars -------------------------------------------------------------


@router.get("/notifications", response_model=list[NotificationRead])
async def my_notifications(session: SessionDep, user: AnyUser) -> list[NotificationRead]:
    """List the caller's messages (the outbox), newest first."""
    notes = await notification_service.list_for_user(session=session, user_id=user.id)
    return [NotificationRead.model_validate(n) for n in notes]


@router.post("/notifications/read", response_model=NotificationsMarked)
async def mark_notifications_read(
    session: SessionDep, user: AnyUser, at: Now
) -> NotificationsMarked:
    """Mark every unread message of the caller as read (as opening the Messages page does)."""
    marked = await notification_service.mark_read(session=session, user_id=user.id, now=at)
    await session.commit()
    return NotificationsMarked(marked=marked)


@router.post("/calendars/feed-token", response_model=FeedTokenCreated, status_code=201)
async def new_feed_token(request: Request, session: SessionDep, user: AnyUser) -> FeedTokenCreated:
    """Make a private calendar feed URL for the caller; the previous one stops working."""
    value, record = await service.new_feed_token(session=session, user=user)
    url = str(request.url_for("member_feed")) + f"?token={value}"
    return FeedTokenCreated(url=url, token=value, prefix=record.prefix)


@router.delete("/calendars/feed-token", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_feed_token(session: SessionDep, user: AnyUser) -> Response:
    """Revoke the caller's private calendar feed URL."""
    await service.revoke_feed_tokens(session=session, user=user)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/calendars/me.ics", name="member_feed", response_class=Response, responses=ICS_RESPONSES
)
async def member_feed(
    request: Request, session: SessionDep, user: CalendarUser, tz: ShopTz, now: Now
) -> Response:
    """Return the caller's bookings as iCalendar (`?token=` from their private feed URL)."""
    bookings = await service.list_bookings(
        session=session,
        user=user,
        start=now - dt.timedelta(days=90),
        include_cancelled=True,
        mine=True,
    )
    machines = await service.machines_by_id(session=session, ids=[b.machine_id for b in bookings])
    body = calendar.member_feed(
        username=user.username,
        bookings=bookings,
        machines=machines,
        tz=tz,
        host=request.url.hostname or "microfactory",
        now=now,
    )
    return Response(body, media_type=ICS)


@router.get(
    "/calendars/machines/{machine_id:int}.ics", response_class=Response, responses=ICS_RESPONSES
)
async def machine_feed(
    machine_id: Id,
    request: Request,
    session: SessionDep,
    user: CalendarUser,
    tz: ShopTz,
    now: Now,
) -> Response:
    """Return a machine's taken time as iCalendar (any member; `?token=` works too)."""
    machine = await machine_service.get_or_raise(session=session, machine_id=machine_id)
    # Every holder's bookings, anonymous ("Booked"): the feed shows when the machine is taken.
    bookings = await service.holding_bookings(
        session=session, machine_id=machine_id, start=now - dt.timedelta(days=7)
    )
    blocks = await service.list_maintenance(session=session, machine_id=machine_id)
    body = calendar.machine_feed(
        machine=machine,
        bookings=bookings,
        blocks=blocks,
        tz=tz,
        host=request.url.hostname or "microfactory",
        now=now,
    )
    return Response(body, media_type=ICS)
