"""Booking request dependencies: the shop's time zone, the clock, and calendar feed callers."""

from __future__ import annotations

import datetime as dt
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import Depends, Query, Request

from microfactory.accounts.models import Role, User
from microfactory.bookings import service
from microfactory.db import utcnow
from microfactory.deps import SessionDep, current_user, oauth2_scheme


def shop_tz(request: Request) -> ZoneInfo:
    """Return the shop's time zone."""
    return ZoneInfo(request.app.state.settings.shop_timezone)


def now(request: Request) -> dt.datetime:
    """Return the current time; tests replace the clock with `app.state.clock`."""
    clock = getattr(request.app.state, "clock", None)
    return clock() if clock is not None else utcnow()


async def calendar_user(
    request: Request,
    session: SessionDep,
    bearer: Annotated[str | None, Depends(oauth2_scheme)],
    token: Annotated[str | None, Query(max_length=200)] = None,
) -> User:
    """Return the caller by their private feed token (calendar apps), or as any API caller."""
    if token:
        return await service.user_for_feed_token(session=session, token=token)
    return await current_user(request, session, bearer)


calendar_user.allowed_roles = frozenset(Role)  # type: ignore[attr-defined]  # route audit

ShopTz = Annotated[ZoneInfo, Depends(shop_tz)]
Now = Annotated[dt.datetime, Depends(now)]
CalendarUser = Annotated[User, Depends(calendar_user)]
