"""Booking request dependencies: calendar feed callers.

The shop's time zone and the clock (`ShopTz`, `Now`) are shared by several areas and live in
microfactory/deps.py; they are re-exported here for the bookings' routes.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from microfactory.accounts.models import Role, User
from microfactory.bookings import service
from microfactory.deps import Now, SessionDep, ShopTz, current_user, now, oauth2_scheme, shop_tz


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

CalendarUser = Annotated[User, Depends(calendar_user)]

__all__ = ["CalendarUser", "Now", "ShopTz", "calendar_user", "now", "shop_tz"]
