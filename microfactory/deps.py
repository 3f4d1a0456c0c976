"""Request dependencies: the session that owns the transaction, the caller, their role."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.accounts import service as account_service
from microfactory.accounts.models import Role, User
from microfactory.config import Settings
from microfactory.db import utcnow
from microfactory.errors import NotAuthenticatedError, PermissionDeniedError

SESSION_COOKIE = "mf_session"
CSRF_COOKIE = "mf_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """Yield the request's session; it commits on success and rolls back on error.

    This dependency is the one owner of the request's transaction: services only flush.
    Side effects (machine commands, pushed events) happen after this commit.
    """
    async with request.app.state.sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


def get_settings(request: Request) -> Settings:
    """Return the app's settings."""
    settings: Settings = request.app.state.settings
    return settings


# scope="function": the commit happens when the route returns, before the response is sent.
# With the default (after the response), a browser following a login redirect could arrive
# before its session token was committed, and be sent back to the login page.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def current_user(
    request: Request,
    session: SessionDep,
    bearer: Annotated[str | None, Depends(oauth2_scheme)],
) -> User:
    """Return the caller from a bearer token, or from the dashboard's session cookie."""
    address = request.client.host if request.client else None
    if bearer:
        user, _ = await account_service.user_for_token(
            session=session, token=bearer, address=address
        )
        return user
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        # A cookie is sent by the browser on its own: unsafe methods must prove they come
        # from our pages (double-submit CSRF token).
        if request.method not in SAFE_METHODS:
            check_csrf(request, request.headers.get(CSRF_HEADER))
        user, _ = await account_service.user_for_token(
            session=session, token=cookie, address=address
        )
        return user
    raise NotAuthenticatedError("not authenticated: send 'Authorization: Bearer <token>'")


def check_csrf(request: Request, submitted: str | None) -> None:
    """Refuse a cookie-authenticated write whose CSRF token does not match the cookie's."""
    expected = request.cookies.get(CSRF_COOKIE)
    if not expected or not submitted or not secrets.compare_digest(expected, submitted):
        raise PermissionDeniedError("missing or invalid CSRF token: reload the page and retry")


RoleCheck = Callable[..., Coroutine[Any, Any, User]]


def require_roles(*roles: Role) -> RoleCheck:
    """Return a dependency that admits only these roles; routes declare it explicitly."""
    allowed = frozenset(roles)

    async def _check(user: Annotated[User, Depends(current_user)]) -> User:
        if user.role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise PermissionDeniedError(f"this needs one of the roles: {names}")
        return user

    _check.allowed_roles = allowed  # type: ignore[attr-defined]  # read by the route audit test
    return _check


AnyUser = Annotated[User, Depends(require_roles(Role.MEMBER, Role.OPERATOR, Role.ADMIN))]
StaffUser = Annotated[User, Depends(require_roles(Role.OPERATOR, Role.ADMIN))]
AdminUser = Annotated[User, Depends(require_roles(Role.ADMIN))]


def shop_tz(request: Request) -> ZoneInfo:
    """Return the shop's time zone."""
    return ZoneInfo(request.app.state.settings.shop_timezone)


def now(request: Request) -> dt.datetime:
    """Return the current time; tests replace the clock with `app.state.clock`."""
    clock = getattr(request.app.state, "clock", None)
    return clock() if clock is not None else utcnow()


ShopTz = Annotated[ZoneInfo, Depends(shop_tz)]
Now = Annotated[dt.datetime, Depends(now)]
