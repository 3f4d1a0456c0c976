"""The member's messages page, and their notification choices (with the shop's channels for
admins) at /account/notifications."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse

from microfactory.accounts.models import Role, User
from microfactory.deps import SessionDep, SettingsDep, now
from microfactory.errors import InvalidInputError
from microfactory.notifications import push, service
from microfactory.web import CsrfChecked, WebAdmin, WebMember, redirect, render

router = APIRouter(include_in_schema=False)


@router.get("/notifications", response_class=HTMLResponse)
async def notifications_page(
    request: Request, session: SessionDep, user: WebMember
) -> HTMLResponse:
    """Show the member's messages, the unread ones marked, then mark them read."""
    notes = await service.list_for_user(session=session, user_id=user.id, limit=100)
    unread_ids = {n.id for n in notes if n.read_at is None}
    await service.mark_read(session=session, user_id=user.id, now=now(request))
    await session.commit()
    request.state.unread = 0  # seen now
    return render(request, "notifications.html", {"notes": notes, "unread_ids": unread_ids})


async def _account_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: User,
    *,
    errors: dict[str, str] | None = None,
    typed: dict[str, Any] | None = None,
    saved: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    choices = await service.choices_for(session=session, user_id=user.id)
    channels = await service.list_channels(session=session)
    page = render(
        request,
        "account_notifications.html",
        {
            "events": [(e, service.EVENT_LABELS[e]) for e in service.EVENTS],
            "choices": choices,
            "own_url_masked": push.masked(choices.own_url) if choices.own_url else None,
            "channels": [c for c in channels if c.enabled],
            "admin_channels": [(c, push.masked(c.url)) for c in channels]
            if user.role is Role.ADMIN
            else None,
            "own_urls_allowed": settings.notify_member_urls,
            "email_configured": bool(settings.smtp_url),
            "has_email": bool(user.email),
            "errors": errors or {},
            "typed": typed or {},
            "saved": saved,
        },
        status_code=status_code,
    )
    page.headers["Cache-Control"] = "no-store"
    return page


@router.get("/account/notifications", response_class=HTMLResponse)
async def account_notifications(
    request: Request, session: SessionDep, settings: SettingsDep, user: WebMember
) -> HTMLResponse:
    """Show what the member hears about and where."""
    return await _account_page(request, session, settings, user)


@router.post("/account/notifications", response_class=HTMLResponse)
async def save_account_notifications(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: WebMember,
    _csrf: CsrfChecked,
    events: Annotated[list[str] | None, Form()] = None,
    email: Annotated[str, Form(max_length=5)] = "",
    channel_ids: Annotated[list[int] | None, Form()] = None,
    own_url: Annotated[str, Form(max_length=2000)] = "",
    remove_own_url: Annotated[str, Form(max_length=5)] = "",
) -> Response:
    """Store the member's choices; a refused one comes back next to its field."""
    try:
        await service.save_choices(
            session=session, user_id=user.id, settings=settings, events=events or [],
            email=bool(email), channel_ids=channel_ids or [], own_url=own_url,
            keep_own_url=not remove_own_url,
        )  # fmt: skip
    except InvalidInputError as exc:
        # The own-URL field is on the page only where the shop allows own URLs.
        own = "own" in exc.detail and settings.notify_member_urls
        field = "own_url" if own else "channels"
        typed = {"events": set(events or []), "email": bool(email)}
        return await _account_page(
            request, session, settings, user, errors={field: exc.detail}, typed=typed,
            status_code=422,
        )  # fmt: skip
    await session.commit()
    return await _account_page(request, session, settings, user, saved="Your choices are saved.")


@router.post("/account/notifications/channels", response_class=HTMLResponse)
async def add_shop_channel(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    admin: WebAdmin,
    _csrf: CsrfChecked,
    name: Annotated[str, Form(max_length=200)] = "",
    url: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Add a push channel to the shop (admins); its URL is never shown back."""
    try:
        await service.add_channel(session=session, name=name, url=url)
    except InvalidInputError as exc:
        field = "channel_name" if exc.detail.startswith("name") else "channel_url"
        message = exc.detail.split(": ", 1)[-1]
        return await _account_page(
            request, session, settings, admin, errors={field: message},
            typed={"channel_name": name}, status_code=422,
        )  # fmt: skip
    await session.commit()
    return redirect("/account/notifications#shop-channels")


@router.post("/account/notifications/channels/{channel_id:int}/delete")
async def delete_shop_channel(
    channel_id: int, session: SessionDep, _admin: WebAdmin, _csrf: CsrfChecked
) -> Response:
    """Remove a push channel from the shop (admins)."""
    await service.delete_channel(session=session, channel_id=channel_id)
    await session.commit()
    return redirect("/account/notifications#shop-channels")
