"""Dashboard pages for bookings, usage and statements; they call the same services as the API."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlalchemy import inspect

from microfactory import forms
from microfactory.accounts import service as account_service
from microfactory.accounts.models import User
from microfactory.bookings import hours, service
from microfactory.bookings.deps import now as clock_now
from microfactory.bookings.models import BookingStatus
from microfactory.bookings.schemas import (
    BookingCreate,
    CertificationCreate,
    ClosureCreate,
    MaintenanceCreate,
    OpeningHoursUpdate,
    OpeningInterval,
)
from microfactory.deps import SessionDep
from microfactory.errors import DomainError, InvalidInputError
from microfactory.machines import service as machine_service
from microfactory.machines.models import MachineKind
from microfactory.notifications import service as notification_service
from microfactory.types import MAX_YEAR, MIN_YEAR, Id
from microfactory.web import CsrfChecked, WebMember, WebStaff, redirect, render

router = APIRouter(include_in_schema=False)
DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
DURATIONS = (15, 30, 45, 60, 90, 120, 180, 240)


def _tz(request: Request) -> ZoneInfo:
    return ZoneInfo(request.app.state.settings.shop_timezone)


def _parse_local(value: str, tz: ZoneInfo, field: str = "start") -> dt.datetime:
    """Parse a form's "YYYY-MM-DDTHH:MM" as shop-local time."""
    try:
        naive = dt.datetime.fromisoformat(value)
    except ValueError:
        raise forms.FieldError(field, "write a date and a time, such as 2026-12-01 10:00") from None
    if naive.tzinfo is not None:
        return naive
    return naive.replace(tzinfo=tz)


async def _after_rollback(session: Any, user: User) -> User:
    """Undo a refused action's writes and reload the caller (a rollback expires objects)."""
    identity = inspect(user).identity  # readable even when the object is expired
    await session.rollback()
    assert identity is not None
    return await account_service.get_or_raise(session=session, user_id=int(identity[0]))


def _error_text(exc: DomainError) -> str:
    return exc.detail


def _with_message(url: str, message: str, key: str = "msg") -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}{key}={quote(message)}"


# -- overview --------------------------------------------------------------------------------


@router.get("/bookings", response_class=HTMLResponse)
async def bookings_page(
    request: Request, session: SessionDep, user: WebMember, msg: str | None = None
) -> HTMLResponse:
    """Show the machines to book, the member's bookings, their messages and calendar feed."""
    return await _bookings_page(request, session, user, msg=msg)


async def _bookings_page(
    request: Request,
    session: Any,
    user: User,
    *,
    msg: str | None = None,
    feed_url: str | None = None,
) -> HTMLResponse:
    tz = _tz(request)
    now = clock_now(request)
    machines = await machine_service.list_machines(session=session)
    mine = await service.list_bookings(
        session=session, user=user, start=now - dt.timedelta(days=1), mine=True
    )
    policy = await service.get_policy(session=session)
    rows = []
    for b in mine:
        opens, closes = service.checkin_window(b, policy.checkin_grace_minutes)
        rows.append(
            {
                "b": b,
                "start": b.start_at.astimezone(tz),
                "end": b.end_at.astimezone(tz),
                "can_check_in": b.status is BookingStatus.BOOKED and opens <= now <= closes,
                "can_cancel": b.status is BookingStatus.BOOKED
                and (
                    user.is_staff
                    or now <= b.start_at - dt.timedelta(minutes=policy.cancel_cutoff_minutes)
                ),
            }
        )
    notes = await notification_service.list_for_user(session=session, user_id=user.id, limit=20)
    feed = await service.feed_token_of(session=session, user=user)
    return render(
        request,
        "bookings.html",
        {
            "machines": machines,
            "rows": rows,
            "notes": notes,
            "feed": feed,
            "feed_url": feed_url,
            "msg": msg,
            "tz": tz,
            "machine_names": {m.id: m.name for m in machines},
            "policy": policy,
        },
    )


@router.post("/bookings/{booking_id}/cancel")
async def cancel_submit(
    request: Request, booking_id: Id, session: SessionDep, user: WebMember, _csrf: CsrfChecked
) -> Response:
    """Cancel a booking from the dashboard."""
    back = request.headers.get("referer") or "/bookings"
    if not back.startswith(str(request.base_url)):
        back = "/bookings"
    try:
        await service.cancel(
            session=session,
            booking_id=booking_id,
            user=user,
            tz=_tz(request),
            now=clock_now(request),
        )
    except DomainError as exc:
        return redirect(_with_message("/bookings", _error_text(exc)))
    return redirect(_with_message("/bookings", f"Booking {booking_id} cancelled."))


@router.post("/bookings/{booking_id}/check-in")
async def check_in_submit(
    request: Request, booking_id: Id, session: SessionDep, user: WebMember, _csrf: CsrfChecked
) -> Response:
    """Check in to a booking from the dashboard."""
    try:
        await service.check_in(
            session=session,
            booking_id=booking_id,
            user=user,
            tz=_tz(request),
            now=clock_now(request),
        )
    except DomainError as exc:
        return redirect(_with_message("/bookings", _error_text(exc)))
    return redirect(_with_message("/bookings", f"Checked in to booking {booking_id}."))


@router.post("/bookings/feed")
async def feed_submit(
    request: Request,
    session: SessionDep,
    user: WebMember,
    _csrf: CsrfChecked,
    action: Annotated[str, Form()] = "new",
) -> Response:
    """Make (or revoke) the member's private calendar feed URL."""
    if action == "revoke":
        await service.revoke_feed_tokens(session=session, user=user)
        return redirect(_with_message("/bookings", "Calendar feed URL revoked."))
    value, _ = await service.new_feed_token(session=session, user=user)
    url = str(request.url_for("member_feed")) + f"?token={value}"
    # Shown once, like API tokens, in this response's body: never in a URL, where it would
    # stay in the browser's history. The page keeps only the prefix afterwards.
    page = await _bookings_page(request, session, user, feed_url=url)
    page.headers["Cache-Control"] = "no-store"
    return page


# -- calendar --------------------------------------------------------------------------------
# The page is a calendar (vendored EventCalendar, web/static/js/calendar.js) fed by the JSON
# below. Times go to it as the shop's wall-clock time without an offset ("floating"): the
# calendar shows the shop's day, as opening hours and closures are set in it. A selection goes
# to POST /api/v1/bookings, whose rules decide; the form on the page does the same without a
# pointer (keyboard, no script).

MAX_EVENT_RANGE = dt.timedelta(days=62)


async def _calendar_context(
    request: Request, session: Any, user: User, machine_id: Id, start: str | None
) -> dict[str, Any]:
    tz = _tz(request)
    now = clock_now(request)
    machine = await machine_service.get_or_raise(session=session, machine_id=machine_id)
    profile = await service.get_profile(session=session, machine_id=machine_id)
    policy = await service.get_policy(session=session)
    today = now.astimezone(tz).date()
    try:
        first = dt.date.fromisoformat(start[:10]) if start else today
    except ValueError:
        first = today
    if not MIN_YEAR < first.year < MAX_YEAR:
        first = today  # the calendar cannot show the weeks around year 1 or 9999
    weekly = await service.weekly_schedule(session=session)
    if weekly:
        lo = min(o for _, o, _ in weekly)
        hi = max(c for _, _, c in weekly)
    else:
        lo, hi = 8 * 60, 20 * 60  # open around the clock: show the usual working day first
    step = profile.slot_minutes
    lo -= lo % step
    durations = [d for d in DURATIONS if d % step == 0] or [step]
    return {
        "machine": machine,
        "profile": profile,
        "policy": policy,
        "first": first.isoformat(),
        "start_value": hours.local_datetime(first, lo, tz).strftime("%Y-%m-%dT%H:%M"),
        "slot_min": hours.format_minute(lo),
        "slot_max": hours.format_minute(hi) if hi < 24 * 60 else "24:00",
        "durations": durations,
        "tzname": str(tz),
        "ics_url": f"/api/v1/calendars/machines/{machine_id}.ics",
    }


def _floating(moment: dt.datetime, tz: ZoneInfo) -> str:
    """Return a moment as the shop's wall-clock time, without an offset (the calendar's)."""
    return moment.astimezone(tz).strftime("%Y-%m-%dT%H:%M:%S")


def _event_range(start: str, end: str, tz: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    """Parse the calendar's range (shop-local dates or date-times) and bound it."""
    lo = _parse_local(start, tz, "start")
    hi = _parse_local(end, tz, "end")
    if not (MIN_YEAR < lo.year < MAX_YEAR and MIN_YEAR < hi.year < MAX_YEAR):
        raise InvalidInputError(f"ask for dates between the years {MIN_YEAR} and {MAX_YEAR}")
    if hi <= lo or hi - lo > MAX_EVENT_RANGE:
        raise InvalidInputError("give start before end, at most 62 days apart")
    return lo, hi


@router.get("/bookings/machines/{machine_id}/events")
async def calendar_events(
    request: Request,
    machine_id: Id,
    session: SessionDep,
    user: WebMember,
    start: Annotated[str, Query(max_length=40)],
    end: Annotated[str, Query(max_length=40)],
) -> list[dict[str, Any]]:
    """Return a machine's calendar: bookings (others' anonymous), maintenance, closed time."""
    tz = _tz(request)
    now = clock_now(request)
    lo, hi = _event_range(start, end, tz)
    await machine_service.get_or_raise(session=session, machine_id=machine_id)
    policy = await service.get_policy(session=session)
    cutoff = dt.timedelta(minutes=policy.cancel_cutoff_minutes)
    mine_status = {
        b.id: b.status
        for b in await service.list_bookings(
            session=session, user=user, machine_id=machine_id, start=lo, end=hi, mine=True
        )
    }
    events: list[dict[str, Any]] = []
    busy = await service.busy_intervals(
        session=session, machine_id=machine_id, start=lo, end=hi, user=user
    )
    for item in busy:
        kind, booking_id = item["kind"], item["booking_id"]
        if kind == "booking" and item["mine"]:
            kind, title = "mine", "Your booking"
        else:
            title = {"booking": "Booked", "buffer": "Cleaning", "maintenance": "Maintenance"}[kind]
        can_cancel = booking_id is not None and (
            user.is_staff
            or (
                mine_status.get(booking_id) is BookingStatus.BOOKED
                and now <= item["start_at"] - cutoff
            )
        )
        events.append(
            {
                "id": f"b{booking_id}" if booking_id is not None else None,
                "start": _floating(item["start_at"], tz),
                "end": _floating(item["end_at"], tz),
                "title": title + (f" #{booking_id}" if booking_id is not None else ""),
                "classNames": [f"ev-{kind}"],
                "editable": False,
                "extendedProps": {
                    "kind": kind,
                    "booking_id": booking_id,
                    "can_cancel": can_cancel,
                    "start_utc": item["start_at"].astimezone(dt.UTC).isoformat(),
                    "end_utc": item["end_at"].astimezone(dt.UTC).isoformat(),
                },
            }
        )
    events.extend(await _closed_events(session, tz, lo, hi))
    return events


async def _closed_events(
    session: Any, tz: ZoneInfo, lo: dt.datetime, hi: dt.datetime
) -> list[dict[str, Any]]:
    """Return the shop's closed time as background events: closure days and out-of-hours."""
    weekly = await service.weekly_schedule(session=session)
    closures = await service.list_closures(session=session)
    open_spans = hours.open_intervals(
        weekly=weekly, closures=[(c.first_day, c.last_day) for c in closures], tz=tz,
        start=lo, end=hi,
    )  # fmt: skip
    out: list[dict[str, Any]] = []
    day = lo.astimezone(tz).date()
    while hours.local_datetime(day, 0, tz) < hi:
        day_start = hours.local_datetime(day, 0, tz)
        day_end = hours.local_datetime(day + dt.timedelta(days=1), 0, tz)
        closure = next((c for c in closures if c.first_day <= day <= c.last_day), None)
        if closure is not None:
            out.append(_background(day_start, day_end, tz, "closure", closure.reason or "Closed"))
        else:
            cursor = day_start
            for a, b in sorted(open_spans):
                if b <= day_start or a >= day_end:
                    continue
                if a > cursor:
                    out.append(_background(cursor, a, tz, "closed", "Closed"))
                cursor = max(cursor, b)
            if cursor < day_end:
                out.append(_background(cursor, day_end, tz, "closed", "Closed"))
        day += dt.timedelta(days=1)
    return out


def _background(
    a: dt.datetime, b: dt.datetime, tz: ZoneInfo, kind: str, title: str
) -> dict[str, Any]:
    return {
        "start": _floating(a, tz),
        "end": _floating(b, tz),
        "title": title,
        "display": "background",
        "classNames": [f"ev-{kind}"],
        "extendedProps": {"kind": kind},
    }


@router.get("/bookings/machines/{machine_id}", response_class=HTMLResponse)
async def calendar_page(
    request: Request,
    machine_id: Id,
    session: SessionDep,
    user: WebMember,
    start: str | None = None,
    msg: str | None = None,
    error: str | None = None,
) -> HTMLResponse:
    """Show a machine's calendar: free time to book, your bookings, others' taken time."""
    ctx = await _calendar_context(request, session, user, machine_id, start)
    return render(request, "booking_calendar.html", {**ctx, "msg": msg, "error": error})


@router.post("/bookings/machines/{machine_id}", response_class=HTMLResponse)
async def calendar_book(
    request: Request,
    machine_id: Id,
    session: SessionDep,
    user: WebMember,
    _csrf: CsrfChecked,
    start: Annotated[str, Form(max_length=40)],
    minutes: Annotated[int, Form(ge=1, le=24 * 60)] = 60,
    week: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    """Book the free time clicked on the calendar."""
    tz = _tz(request)
    back = f"/bookings/machines/{machine_id}" + (f"?start={quote(week)}" if week else "")
    try:
        begin = _parse_local(start, tz)
        try:
            booking_in = BookingCreate(
                machine_id=machine_id, start=begin, end=begin + dt.timedelta(minutes=minutes)
            )
        except (ValueError, OverflowError) as exc:  # pydantic's checks; past year 9999
            detail = (
                validation_text(exc)
                if isinstance(exc, ValidationError)
                else f"book between the years {MIN_YEAR} and {MAX_YEAR}"
            )
            raise InvalidInputError(detail) from None
        await service.create(
            session=session,
            booking_in=booking_in,
            member=user,
            tz=tz,
            now=clock_now(request),
        )
    except DomainError as exc:
        user = await _after_rollback(session, user)
        ctx = await _calendar_context(request, session, user, machine_id, week or None)
        return render(
            request,
            "booking_calendar.html",
            {**ctx, "msg": None, "error": exc.detail, "start_value": start[:16]},
            status_code=exc.status_code,
        )
    local = begin.astimezone(tz).strftime("%a %d %b %H:%M")
    return redirect(_with_message(back, f"Booked from {local} for {minutes} minutes."))


# -- operators -------------------------------------------------------------------------------


async def _admin_context(request: Request, session: Any, user: User) -> dict[str, Any]:
    weekly = await service.weekly_schedule(session=session)
    per_day: dict[int, list[str]] = {d: [] for d in range(7)}
    for w, o, c in weekly:
        per_day[w].append(f"{hours.format_minute(o)}-{hours.format_minute(c)}")
    machines = await machine_service.list_machines(session=session)
    return {
        "hours": [
            {"day": DAY_NAMES[d], "weekday": d, "value": ", ".join(per_day[d])} for d in range(7)
        ],
        "closures": await service.list_closures(session=session),
        "certs": await service.list_certifications(session=session, user=user),
        "blocks": await service.list_maintenance(session=session),
        "quotas": {
            q.machine_kind.value: q.hours_per_week
            for q in await service.list_quotas(session=session)
        },
        "machines": machines,
        "machine_names": {m.id: m.name for m in machines},
        "users": await account_service.list_users(session=session),
        "kinds": list(MachineKind),
        "tz": _tz(request),
        "valid_until": valid_until,
    }


def valid_until(expires_at: dt.datetime, tz: ZoneInfo) -> str:
    """The last day (or moment) a certification is valid, as the form that made it says it.

    "Valid until 2027-06-30" is stored as the exclusive end 2027-07-01 00:00 in the shop's
    zone; showing that date would read as one day more than the operator typed.
    """
    local = expires_at.astimezone(tz)
    if local.time() == dt.time(0, 0):
        return (local.date() - dt.timedelta(days=1)).isoformat()
    return local.strftime("%Y-%m-%d %H:%M")


@router.get("/bookings/admin", response_class=HTMLResponse)
async def admin_page(
    request: Request,
    session: SessionDep,
    user: WebStaff,
    msg: str | None = None,
    error: str | None = None,
) -> HTMLResponse:
    """Show the operators' booking views: hours, closures, certifications, maintenance, quotas."""
    ctx = await _admin_context(request, session, user)
    return render(request, "booking_admin.html", {**ctx, "msg": msg, "error": error})


async def _typed(request: Request) -> dict[str, str]:
    """Return what was typed into the refused form (not its CSRF token), to fill it again."""
    form = await request.form()
    typed = {k: str(v) for k, v in form.items() if k != "csrf_token"}
    return {**typed, "form": request.url.path}


async def _admin_action(
    request: Request, session: Any, user: User, action: Any, done: str
) -> Response:
    try:
        await action()
    except DomainError as exc:
        user = await _after_rollback(session, user)
        ctx = await _admin_context(request, session, user)
        error, overlap = exc.detail, None
        field_errors = (
            {str(exc.extra["field"]): str(exc.extra["field_message"])}
            if "field" in exc.extra
            else {}
        )
        if exc.extra.get("rule") == "maintenance_overlap":
            # The API's wording names a field; the page asks the question with two buttons.
            overlap = len(exc.extra.get("bookings") or [])
            error = (
                f"{overlap} booking{'s overlap' if overlap != 1 else ' overlaps'} this block. "
                "Choose below whether to cancel them (their members are told) or keep them."
            )
        return render(
            request,
            "booking_admin.html",
            {
                **ctx,
                "msg": None,
                "error": error,
                "overlap": overlap,
                "field_errors": field_errors,
                "typed": await _typed(request),
            },
            status_code=exc.status_code,
        )
    except (ValueError, OverflowError) as exc:  # pydantic validation; dates past year 9999
        user = await _after_rollback(session, user)
        ctx = await _admin_context(request, session, user)
        if isinstance(exc, ValidationError):
            fields, general = forms.plain_errors(exc.errors(), rename=FORM_NAMES)
            error = forms.summary(fields, general)
        else:
            fields, error = {}, f"use dates between the years {MIN_YEAR} and {MAX_YEAR}"
        return render(
            request,
            "booking_admin.html",
            {
                **ctx,
                "msg": None,
                "error": error,
                "field_errors": fields,
                "typed": await _typed(request),
            },
            status_code=422,
        )
    return redirect(_with_message("/bookings/admin", done))


# The booking models' field names that the admin forms type under another name.
FORM_NAMES = {"expires_at": "expires", "machine_kind": "scope"}


def validation_text(exc: ValidationError) -> str:
    """Say which fields were refused and why, in one line for a person."""
    return forms.summary(*forms.plain_errors(exc.errors(), rename=FORM_NAMES))


@router.post("/bookings/admin/hours", response_class=HTMLResponse)
async def admin_hours(
    request: Request, session: SessionDep, user: WebStaff, _csrf: CsrfChecked
) -> Response:
    """Replace the weekly opening hours ("09:00-12:00, 13:00-18:00" per day; empty = closed)."""
    form = await request.form()

    async def action() -> None:
        intervals = []
        for d in range(7):
            text = str(form.get(f"day{d}", "")).strip()
            for part in filter(None, (p.strip() for p in text.split(","))):
                # Refused next to the day's field, in words (not the schema's time pattern).
                if "-" not in part:
                    raise forms.FieldError(f"day{d}", "write intervals like 09:00-18:00")
                opens, closes = (x.strip() for x in part.split("-", 1))
                try:
                    interval = OpeningInterval(weekday=d, opens=opens, closes=closes)
                except ValidationError as exc:
                    order = [e for e in exc.errors() if e["type"] == "value_error"]
                    raise forms.FieldError(
                        f"day{d}",
                        f"{part}: the closing time must be after the opening time"
                        if order
                        else f"{part}: write times as HH:MM, from 00:00 to 24:00",
                    ) from None
                intervals.append(interval)
        await service.set_weekly_schedule(
            session=session, hours_in=OpeningHoursUpdate(intervals=intervals)
        )

    return await _admin_action(request, session, user, action, "Opening hours saved.")


@router.post("/bookings/admin/closures", response_class=HTMLResponse)
async def admin_closure(
    request: Request,
    session: SessionDep,
    user: WebStaff,
    _csrf: CsrfChecked,
    first_day: Annotated[str, Form(max_length=40)] = "",
    last_day: Annotated[str, Form(max_length=40)] = "",
    reason: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Close the shop for whole days."""

    async def action() -> None:
        first = forms.date(first_day, "first_day")
        last = forms.date(last_day, "last_day", required=False) or first
        assert first is not None
        assert last is not None
        if last < first:
            raise forms.FieldError("last_day", "must be on or after the first day")
        await service.add_closure(
            session=session,
            closure_in=ClosureCreate(first_day=first, last_day=last, reason=reason),
        )

    return await _admin_action(request, session, user, action, "Closure added.")


@router.post("/bookings/admin/closures/{closure_id}/remove", response_class=HTMLResponse)
async def admin_closure_remove(
    request: Request, closure_id: Id, session: SessionDep, user: WebStaff, _csrf: CsrfChecked
) -> Response:
    """Remove a closure."""

    async def action() -> None:
        await service.remove_closure(session=session, closure_id=closure_id)

    return await _admin_action(request, session, user, action, "Closure removed.")


@router.post("/bookings/admin/certifications", response_class=HTMLResponse)
async def admin_certify(
    request: Request,
    session: SessionDep,
    user: WebStaff,
    _csrf: CsrfChecked,
    user_id: Annotated[str, Form(max_length=40)] = "",
    scope: Annotated[str, Form(max_length=100)] = "",
    expires: Annotated[str, Form(max_length=40)] = "",
    note: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Certify a member for a machine ("machine:ID") or a kind ("kind:KIND")."""
    tz = _tz(request)

    async def action() -> None:
        member_id = forms.whole_number(user_id, "user_id")
        machine_id = (
            int(scope[8:]) if scope.startswith("machine:") and scope[8:].isdigit() else None
        )
        kinds = {k.value: k for k in MachineKind}
        kind = kinds.get(scope[5:]) if scope.startswith("kind:") else None
        if machine_id is None and kind is None:
            raise forms.FieldError("scope", "choose a machine or a kind of machine")
        last_day = forms.date(expires, "expires", required=False)
        expires_at = (
            hours.local_datetime(last_day + dt.timedelta(days=1), 0, tz)
            if last_day is not None
            else None
        )
        await service.grant_certification(
            session=session,
            cert_in=CertificationCreate(
                user_id=member_id,
                machine_id=machine_id,
                machine_kind=kind,
                expires_at=expires_at,
                note=note,
            ),
            operator=user,
        )

    return await _admin_action(request, session, user, action, "Certification granted.")


@router.post("/bookings/admin/certifications/{cert_id}/revoke", response_class=HTMLResponse)
async def admin_revoke(
    request: Request, cert_id: Id, session: SessionDep, user: WebStaff, _csrf: CsrfChecked
) -> Response:
    """Revoke a certification."""

    async def action() -> None:
        await service.revoke_certification(session=session, cert_id=cert_id)

    return await _admin_action(request, session, user, action, "Certification revoked.")


@router.post("/bookings/admin/maintenance", response_class=HTMLResponse)
async def admin_maintenance(
    request: Request,
    session: SessionDep,
    user: WebStaff,
    _csrf: CsrfChecked,
    machine_id: Annotated[str, Form(max_length=40)] = "",
    start: Annotated[str, Form(max_length=40)] = "",
    end: Annotated[str, Form(max_length=40)] = "",
    reason: Annotated[str, Form(max_length=2000)] = "",
    on_conflict: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    """Block machine time; overlapping bookings are cancelled or kept as chosen."""
    tz = _tz(request)

    async def action() -> None:
        await service.create_maintenance(
            session=session,
            block_in=MaintenanceCreate(
                machine_id=forms.whole_number(machine_id, "machine_id"),
                start=_parse_local(start, tz, "start"),
                end=_parse_local(end, tz, "end"),
                reason=reason,
                on_conflict=on_conflict if on_conflict in ("cancel", "keep") else None,
            ),
            operator=user,
            tz=tz,
        )

    return await _admin_action(request, session, user, action, "Maintenance block added.")


@router.post("/bookings/admin/maintenance/{block_id}/remove", response_class=HTMLResponse)
async def admin_maintenance_remove(
    request: Request, block_id: Id, session: SessionDep, user: WebStaff, _csrf: CsrfChecked
) -> Response:
    """Remove a maintenance block."""

    async def action() -> None:
        await service.remove_maintenance(session=session, block_id=block_id)

    return await _admin_action(request, session, user, action, "Maintenance block removed.")


@router.post("/bookings/admin/quotas", response_class=HTMLResponse)
async def admin_quota(
    request: Request,
    session: SessionDep,
    user: WebStaff,
    _csrf: CsrfChecked,
    kind: Annotated[str, Form(max_length=40)] = "",
    hours_per_week: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    """Set or clear a weekly quota."""

    async def action() -> None:
        kinds = {k.value: k for k in MachineKind}
        if kind not in kinds:
            raise forms.FieldError("kind", "choose a kind of machine")
        value = forms.number(hours_per_week, "hours_per_week")
        if value is not None and not 0 < value <= 168:
            raise forms.FieldError("hours_per_week", "write a number of hours from 0 to 168")
        await service.set_quota(session=session, kind=kinds[kind], hours_per_week=value)

    return await _admin_action(request, session, user, action, "Quota saved.")
