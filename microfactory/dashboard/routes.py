"""Dashboard pages: login, machines, and the users admin page."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from typing import Annotated, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select

from microfactory import forms, retention
from microfactory.accounts import service as account_service
from microfactory.accounts.models import Role, TokenKind, User
from microfactory.accounts.schemas import ApiTokenCreate, UserCreate, UserUpdate
from microfactory.accounts.throttle import LockoutKind, client_address, get_throttle
from microfactory.admin.machines import card_photos
from microfactory.bookings import service as booking_service
from microfactory.db import utcnow
from microfactory.deps import SESSION_COOKIE, SessionDep, check_csrf, now
from microfactory.errors import DomainError, NotAuthenticatedError, TooManyRequestsError
from microfactory.files import store_upload
from microfactory.jobs import lifecycle as job_lifecycle
from microfactory.jobs import queue as job_queue
from microfactory.jobs import service as job_service
from microfactory.jobs.explain import explain_failure
from microfactory.jobs.matcher import order_queue
from microfactory.jobs.models import ENDED_STATES, Job, JobState
from microfactory.machines import service as machine_service
from microfactory.machines import visibility as machine_visibility
from microfactory.machines.models import MachineKind
from microfactory.network.requests import service as request_service
from microfactory.types import Id
from microfactory.web import (
    CsrfChecked,
    LoginRequired,
    WebAdmin,
    WebMember,
    WebStaff,
    redirect,
    render,
)

router = APIRouter(include_in_schema=False)
log = logging.getLogger("microfactory.dashboard")


def _safe_next(target: str | None) -> str:
    # Only same-site paths: an open redirect would let a phishing link bounce through us.
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return "/machines"


@router.get("/", response_class=HTMLResponse)
async def index(request: Request) -> Response:
    """Send the browser to the machine list (public: it redirects to login if needed)."""
    return RedirectResponse("/machines", status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    """Show the login form (public)."""
    return render(request, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/login", response_class=HTMLResponse)
async def login_submit(
    request: Request,
    session: SessionDep,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=256)],
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/machines",
) -> Response:
    """Log in and set the session cookie (public; CSRF-checked)."""
    check_csrf(request, csrf_token)
    try:
        user = await account_service.login(
            session=session,
            throttle=get_throttle(request),
            username=username,
            password=password,
            address=client_address(request),
        )
    except (NotAuthenticatedError, TooManyRequestsError) as exc:
        page = render(
            request,
            "login.html",
            {"next": _safe_next(next), "error": exc.detail, "username": username},
            status_code=exc.status_code,
        )
        if "retry_after_s" in exc.extra:
            page.headers["Retry-After"] = str(exc.extra["retry_after_s"])
        return page
    settings = request.app.state.settings
    token, _ = await account_service.issue_token(
        session=session,
        user=user,
        kind=TokenKind.WEB,
        name="dashboard",
        ttl=dt.timedelta(seconds=settings.login_token_ttl_s),
    )
    response = redirect(_safe_next(next))
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.login_token_ttl_s,
        httponly=True,
        samesite="lax",
        secure=settings.secure_cookies,
    )
    return response


@router.post("/logout")
async def logout(request: Request, session: SessionDep, _csrf: CsrfChecked) -> Response:
    """Log out: revoke the session token and clear the cookie (public; CSRF-checked)."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        await account_service.revoke_by_value(session=session, token=token)
    response = redirect("/login")
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/machines", response_class=HTMLResponse)
async def machines_page(request: Request, session: SessionDep, user: WebMember) -> HTMLResponse:
    """Show the shop's machines with kind, live status and capabilities."""
    fleet = request.app.state.fleet
    records = await machine_service.list_machines(session=session)
    statuses = await machine_visibility.visible_statuses(
        session=session, user=user, statuses={m.id: fleet.status(m) for m in records}
    )
    machines = [machine_service.to_read(m, statuses[m.id]) for m in records]
    tz = ZoneInfo(request.app.state.settings.shop_timezone)
    booked = await booking_service.availability(
        session=session, machine_ids=[m.id for m in records], now=now(request), user=user
    )
    # The cards show a machine's photo, and the running job's slicer picture (only a job the
    # user may see: visible_statuses hides the others' ids).
    upload_dir = request.app.state.settings.upload_dir
    photos = await asyncio.to_thread(card_photos, upload_dir, [m.id for m in records])
    job_ids = [s["job_id"] for s in statuses.values() if s.get("job_id") is not None]
    thumbnails: set[int] = set()
    if job_ids:
        rows = await session.execute(
            select(Job.id, Job.analysis, Job.flags).where(Job.id.in_(job_ids))
        )
        thumbnails = {
            jid
            for jid, analysis, flags in rows
            if (analysis or {}).get("thumbnails") and not (flags or {}).get("file_deleted_at")
        }
    return render(
        request,
        "machines.html",
        {
            "machines": machines,
            "staff": user.is_staff,
            "booked": booked,
            "tz": tz,
            "photos": photos,
            "thumbnails": thumbnails,
        },
    )


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(
    request: Request, session: SessionDep, user: WebMember, cursor: str | None = None
) -> HTMLResponse:
    """Show jobs, a page at a time: a member's own, or the whole shop's for operators."""
    page = await job_service.list_jobs(session=session, user=user, limit=50, cursor=cursor)
    machines = {m.id: m for m in await machine_service.list_machines(session=session)}
    return render(
        request,
        "jobs.html",
        {
            "jobs": page.items,
            "next_cursor": page.next_cursor,
            "paged": cursor is not None,
            "machines": machines,
            "staff": user.is_staff,
        },
    )


@router.get("/queue", response_class=HTMLResponse)
async def queue_page(
    request: Request,
    session: SessionDep,
    user: WebStaff,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[int, Query(ge=0)] = 0,
) -> HTMLResponse:
    """Show the shop-wide queue to operators: approve, reprioritise, dispatch, clear beds.

    Every open job is read (none vanishes off a cut); the queued ones are shown a page at a
    time in the order the matcher takes them, `cursor` being the place in that order.
    """
    fleet = request.app.state.fleet
    machines = await machine_service.list_machines(session=session)
    by_id = {m.id: m for m in machines}
    jobs = await job_service.list_open(session=session)
    owners = {u.id: u.username for u in await account_service.list_users(session=session)}
    groups: dict[str, list[Any]] = {
        "approval": [],
        "preparing": [],
        "queued": [],
        "active": [],
        "bed": [],
    }
    for j in jobs:
        if j.state is JobState.SUBMITTED:
            groups["approval"].append(j)
        elif j.state is JobState.APPROVED:
            groups["preparing"].append(j)
        elif j.state is JobState.QUEUED:
            groups["queued"].append(j)
        elif j.state in (JobState.ASSIGNED, JobState.RUNNING, JobState.PAUSED):
            groups["active"].append(j)
        elif j.state in ENDED_STATES and j.machine_id is not None:
            groups["bed"].append(j)
    # Show the queue in the order the matcher would take it.
    usage = await job_queue.recent_usage(
        session,
        utcnow() - dt.timedelta(days=request.app.state.settings.fair_share_window_days),
        {j.owner_id for j in groups["queued"]},
    )
    order = [q.id for q in order_queue([job_queue.queued_job(j) for j in groups["queued"]], usage)]
    place = {job_id: i for i, job_id in enumerate(order)}
    groups["queued"].sort(key=lambda j: place[j.id])
    queued_total = len(groups["queued"])
    groups["queued"] = groups["queued"][cursor : cursor + limit]
    paging = {
        "total": queued_total,
        "first": cursor + 1,
        "prev": max(0, cursor - limit) if cursor > 0 else None,
        "next": cursor + limit if cursor + limit < queued_total else None,
        "limit": limit,
    }
    idle = {
        kind: [
            m
            for m in machines
            if m.kind is kind and fleet.status(m).get("state") == "idle" and m.driver != "manual"
        ]
        for kind in MachineKind
    }
    # Requests from other shops waiting for an operator's answer (accept, counter, decline).
    incoming = [
        r
        for r in await request_service.list_visible(session=session, user=user)
        if r.direction == "incoming" and r.state in ("received", "agreed")
    ]
    return render(
        request,
        "queue.html",
        {
            "incoming": incoming,
            "groups": groups,
            "machines": by_id,
            "owners": owners,
            "idle": idle,
            "paging": paging,
        },
    )


@router.get("/jobs/new", response_class=HTMLResponse)
async def job_new_page(request: Request, session: SessionDep, user: WebMember) -> HTMLResponse:
    """Show the form to submit a G-code job."""
    machines = await machine_service.list_machines(session=session)
    return render(
        request, "job_new.html", {"machines": machines, "kinds": list(MachineKind), "error": None}
    )


@router.post("/jobs/new", response_class=HTMLResponse)
async def job_new_submit(
    request: Request,
    session: SessionDep,
    user: WebMember,
    file: Annotated[UploadFile, File()],
    csrf_token: Annotated[str, Form()] = "",
    title: Annotated[str, Form(max_length=200)] = "",
    target: Annotated[str, Form()] = "",
) -> Response:
    """Submit a G-code job from the dashboard."""
    check_csrf(request, csrf_token)
    settings = request.app.state.settings
    machine_id: Id | None = None
    kind: MachineKind | None = None
    if target.startswith("machine:"):
        machine_id = int(target.split(":", 1)[1]) if target[8:].isdigit() else None
    elif target.startswith("kind:") and target[5:] in {k.value for k in MachineKind}:
        kind = MachineKind(target[5:])
    try:
        stored = await store_upload(file, settings.upload_dir, settings.max_upload_bytes, ".gcode")
        await retention.check_quota_or_discard(
            session=session, settings=settings, user=user, stored=[(stored.path, stored.size)]
        )
        job = await job_service.create_from_upload(
            session=session,
            owner=user,
            stored=stored,
            title=title or None,
            machine_kind=kind,
            machine_id=machine_id,
        )
    except DomainError as exc:
        machines = await machine_service.list_machines(session=session)
        return render(
            request,
            "job_new.html",
            {"machines": machines, "kinds": list(MachineKind), "error": exc.detail},
            status_code=exc.status_code,
        )
    return redirect(f"/jobs/{job.id}")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(
    request: Request, job_id: Id, session: SessionDep, user: WebMember
) -> HTMLResponse:
    """Show one job: state, machine, progress, and why it failed in plain words."""
    job = await job_service.get_visible(session=session, job_id=job_id, user=user)
    machine = (
        await machine_service.get_or_raise(session=session, machine_id=job.machine_id)
        if job.machine_id
        else None
    )
    staff = user.is_staff
    candidates = []
    if staff and job.state.value in ("approved", "queued"):
        fleet = request.app.state.fleet
        candidates = [
            m
            for m in await machine_service.list_machines(session=session)
            if m.kind == job.machine_kind
            and fleet.status(m).get("state") == "idle"
            and m.driver != "manual"
        ]
    events = await job_lifecycle.events_of(session=session, job_id=job.id)
    return render(
        request,
        "job.html",
        {
            "job": job,
            "machine": machine,
            "staff": staff,
            "owner": job.owner_id == user.id,
            "advice": explain_failure(job.failure_reason),
            "candidates": candidates,
            "events": events,
            "actors": await job_lifecycle.actor_names(session=session, events=events),
        },
    )


async def _users_page(
    request: Request,
    session: SessionDep,
    *,
    error: str | None = None,
    notice: str | None = None,
    row_error: tuple[int, str] | None = None,
    generated: tuple[str, str] | None = None,
    typed: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    users = await account_service.list_users(session=session)
    page = render(
        request,
        "admin_users.html",
        {
            "users": users,
            "roles": list(Role),
            "error": error,
            "notice": notice,
            "row_error": row_error,
            "generated": generated,
            "typed": typed or {},
            "lockouts": await get_throttle(request).lockouts(),
        },
        status_code=status_code,
    )
    if generated is not None:
        page.headers["Cache-Control"] = "no-store"  # a one-time password is on this page
    return page


@router.get("/admin/users", response_class=HTMLResponse)
async def users_page(
    request: Request, session: SessionDep, user: WebAdmin, done: str | None = None
) -> HTMLResponse:
    """Show and manage users (admins)."""
    notice = {
        "saved": "Saved.",
        "password": "The new password is set; the user's sessions and tokens were ended.",
        "lifted": "Lockout lifted.",
    }.get(done or "")
    return await _users_page(request, session, notice=notice)


@router.post("/admin/users", response_class=HTMLResponse)
async def users_create(
    request: Request,
    session: SessionDep,
    user: WebAdmin,
    _csrf: CsrfChecked,
    username: Annotated[str, Form(max_length=200)],
    password: Annotated[str, Form(max_length=300)],
    role: Annotated[str, Form(max_length=20)] = "member",
    full_name: Annotated[str, Form(max_length=300)] = "",
) -> Response:
    """Create a user from the admin page (admins)."""
    error = None
    try:
        user_in = UserCreate(username=username, password=password, role=role, full_name=full_name)
        await account_service.create(session=session, user_in=user_in)
    except ValidationError as exc:
        fields, general = forms.plain_errors(exc.errors())
        if "username" in fields:
            fields["username"] = "use 2 to 64 letters, digits, dots, dashes or underscores"
        error = forms.summary(fields, general)
    except DomainError as exc:
        error = exc.detail
    if error:
        typed = {"username": username, "full_name": full_name, "role": role}
        return await _users_page(request, session, error=error, typed=typed, status_code=422)
    return redirect("/admin/users?done=saved")


@router.post("/admin/users/{user_id}/active", response_class=HTMLResponse)
async def users_toggle(
    request: Request,
    user_id: Id,
    session: SessionDep,
    admin: WebAdmin,
    _csrf: CsrfChecked,
    active: Annotated[bool, Form()],
) -> Response:
    """Enable or disable a user (admins); an admin cannot disable themselves."""
    target = await account_service.get_or_raise(session=session, user_id=user_id)
    if target.id == admin.id and not active:
        return await _users_page(
            request,
            session,
            row_error=(
                target.id,
                "You cannot disable your own account: you would be logged out with no "
                "admin left to let you back in. Ask another admin to do it.",
            ),
            status_code=409,
        )
    await account_service.update(session=session, user=target, user_in=UserUpdate(is_active=active))
    return redirect("/admin/users?done=saved")


@router.post("/admin/users/{user_id}", response_class=HTMLResponse)
async def users_change(
    request: Request,
    user_id: Id,
    session: SessionDep,
    admin: WebAdmin,
    _csrf: CsrfChecked,
    role: Annotated[str, Form(max_length=20)] = "",
    trusted: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    """Change a user's role and trusted flag (admins); an admin cannot demote themselves."""
    target = await account_service.get_or_raise(session=session, user_id=user_id)
    if role not in {r.value for r in Role}:
        return await _users_page(
            request,
            session,
            row_error=(target.id, "Role: choose member, operator or admin"),
            status_code=422,
        )
    if target.id == admin.id and role != Role.ADMIN.value:
        return await _users_page(
            request,
            session,
            row_error=(
                target.id,
                "You cannot take away your own admin role: no one might be left to manage "
                "the shop. Ask another admin to do it.",
            ),
            status_code=409,
        )
    await account_service.update(
        session=session,
        user=target,
        user_in=UserUpdate(role=Role(role), trusted=trusted in ("on", "true")),
    )
    return redirect("/admin/users?done=saved")


@router.post("/admin/users/{user_id}/password", response_class=HTMLResponse)
async def users_password(
    request: Request,
    user_id: Id,
    session: SessionDep,
    admin: WebAdmin,
    _csrf: CsrfChecked,
    new_password: Annotated[str, Form(max_length=300)] = "",
    action: Annotated[str, Form(max_length=10)] = "set",
) -> Response:
    """Set a user's password, or generate a one-time one shown once (admins).

    Either way the user's sessions and tokens end, so the old password's holder is out.
    """
    target = await account_service.get_or_raise(session=session, user_id=user_id)
    generated = None
    if action == "generate":
        new_password = secrets.token_urlsafe(12)
        generated = (target.username, new_password)
    elif len(new_password) < 8:
        return await _users_page(
            request,
            session,
            row_error=(target.id, "New password: write at least 8 characters"),
            status_code=422,
        )
    try:
        password_in = UserUpdate(password=new_password)
    except ValidationError as exc:
        message = forms.summary(*forms.plain_errors(exc.errors()))
        return await _users_page(request, session, row_error=(target.id, message), status_code=422)
    await account_service.update(session=session, user=target, user_in=password_in)
    # Who reset whose password is logged; the password never is.
    log.warning(
        "admin %s reset the password of %s (%s)",
        admin.username,
        target.username,
        "generated" if generated else "typed",
        extra={"event": "password_reset"},
    )
    if generated is None:
        return redirect("/admin/users?done=password")
    return await _users_page(request, session, generated=generated)


async def _tokens_page(
    request: Request,
    session: SessionDep,
    user: User,
    *,
    created: dict[str, Any] | None = None,
    error: str | None = None,
    form: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    tokens = await account_service.list_tokens(session=session, user=user)
    page = render(
        request,
        "tokens.html",
        {
            "tokens": tokens,
            "created": created,
            "error": error,
            "now": utcnow(),
            "form_name": (form or {}).get("name"),
            "form_days": (form or {}).get("expires_in_days"),
        },
        status_code=status_code,
    )
    page.headers["Cache-Control"] = "no-store"  # a new token's value is on this page
    return page


@router.get("/account/tokens", response_class=HTMLResponse)
async def tokens_page(request: Request, session: SessionDep, user: WebMember) -> HTMLResponse:
    """Show the caller's personal API tokens: expiry and last use."""
    return await _tokens_page(request, session, user)


@router.post("/account/tokens", response_class=HTMLResponse)
async def tokens_create(
    request: Request,
    session: SessionDep,
    user: WebMember,
    _csrf: CsrfChecked,
    name: Annotated[str, Form(max_length=200)] = "",
    expires_in_days: Annotated[str, Form(max_length=10)] = "",
) -> HTMLResponse:
    """Make a personal API token; its value is shown on this page only."""
    try:
        token_in = ApiTokenCreate(
            name=name.strip(), expires_in_days=int(expires_in_days) if expires_in_days else None
        )
    except (ValueError, ValidationError) as exc:
        message = (
            "; ".join(e["msg"] for e in exc.errors())
            if isinstance(exc, ValidationError)
            else "the expiry must be a whole number of days"
        )
        return await _tokens_page(
            request,
            session,
            user,
            error=message,
            form={"name": name, "expires_in_days": expires_in_days},
            status_code=422,
        )
    ttl = dt.timedelta(days=token_in.expires_in_days) if token_in.expires_in_days else None
    value, record = await account_service.issue_token(
        session=session, user=user, kind=TokenKind.PERSONAL, name=token_in.name, ttl=ttl
    )
    created = {"name": record.name, "prefix": record.prefix, "token": value}
    return await _tokens_page(request, session, user, created=created, status_code=201)


@router.post("/account/tokens/{token_id}/revoke")
async def tokens_revoke(
    token_id: int, session: SessionDep, user: WebMember, _csrf: CsrfChecked
) -> Response:
    """Revoke one of the caller's tokens."""
    await account_service.revoke_token(session=session, user=user, token_id=token_id)
    return redirect("/account/tokens")


@router.post("/admin/lockouts/lift")
async def lockout_lift(
    request: Request,
    admin: WebAdmin,
    _csrf: CsrfChecked,
    kind: Annotated[LockoutKind, Form()],
    key: Annotated[str, Form(max_length=128)],
) -> Response:
    """Lift a login lockout (admins)."""
    was = await get_throttle(request).lift(kind=kind, key=key)
    account_service.log_lockout_lifted(admin=admin, kind=kind, key=key, was_locked_out=was)
    return redirect("/admin/users?done=lifted#lockouts")


def install_dashboard_handlers(app: FastAPI) -> None:
    """Send logged-out browsers to the login page and show errors as pages."""

    async def _login_required(request: Request, _exc: Exception) -> Response:
        target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        return RedirectResponse(f"/login?next={target}", status_code=303)

    def _html_error(request: Request, exc: DomainError) -> Response:
        return render(
            request,
            "error.html",
            {"status": exc.status_code, "detail": exc.detail},
            status_code=exc.status_code,
        )

    app.add_exception_handler(LoginRequired, _login_required)
    app.state.html_error_renderer = _html_error


__all__ = ["install_dashboard_handlers", "router"]
