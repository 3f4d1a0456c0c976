"""Account endpoints: login, who am I, users (admin) and personal tokens."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from fastapi.security import OAuth2PasswordRequestForm

from microfactory.accounts import service
from microfactory.accounts.models import TokenKind
from microfactory.accounts.schemas import (
    ApiTokenCreate,
    ApiTokenCreated,
    ApiTokenRead,
    LockoutLifted,
    LockoutRead,
    TokenResponse,
    UserCreate,
    UserRead,
    UserUpdate,
)
from microfactory.accounts.throttle import LockoutKind, LoginThrottle, client_address, get_throttle
from microfactory.deps import AdminUser, AnyUser, SessionDep, SettingsDep
from microfactory.types import Id

router = APIRouter(prefix="/api/v1", tags=["accounts"])


ThrottleDep = Annotated[LoginThrottle, Depends(get_throttle)]


@router.post(
    "/auth/token",
    response_model=TokenResponse,
    responses={429: {"description": "too many failed logins; see Retry-After"}},
)
async def login(
    request: Request,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    session: SessionDep,
    settings: SettingsDep,
    throttle: ThrottleDep,
) -> TokenResponse:
    """Exchange a username and password for a bearer token (public; failures throttled)."""
    user = await service.login(
        session=session,
        throttle=throttle,
        username=form.username,
        password=form.password,
        address=client_address(request),
    )
    ttl = dt.timedelta(seconds=settings.login_token_ttl_s)
    token, _ = await service.issue_token(
        session=session, user=user, kind=TokenKind.LOGIN, name="login", ttl=ttl
    )
    return TokenResponse(access_token=token, expires_in=settings.login_token_ttl_s)


@router.get("/auth/lockouts", response_model=list[LockoutRead])
async def list_lockouts(throttle: ThrottleDep, _admin: AdminUser) -> list[LockoutRead]:
    """List usernames and client addresses locked out after failed logins (admin)."""
    return [
        LockoutRead(
            kind=lk.kind,
            key=lk.key,
            failures=lk.failures,
            retry_after_s=lk.retry_after_s,
            until=dt.datetime.fromtimestamp(lk.until, dt.UTC),
        )
        for lk in await throttle.lockouts()
    ]


@router.delete("/auth/lockouts/{kind}/{key}", response_model=LockoutLifted)
async def lift_lockout(
    kind: LockoutKind, key: str, throttle: ThrottleDep, admin: AdminUser
) -> LockoutLifted:
    """Lift the lockout of a username or client address (admin)."""
    was = await throttle.lift(kind=kind, key=key)
    service.log_lockout_lifted(admin=admin, kind=kind, key=key, was_locked_out=was)
    return LockoutLifted(kind=kind, key=key, was_locked_out=was)


@router.get("/users/me", response_model=UserRead)
async def me(user: AnyUser) -> UserRead:
    """Return the caller."""
    return UserRead.model_validate(user)


@router.get("/users", response_model=list[UserRead])
async def list_users(session: SessionDep, _admin: AdminUser) -> list[UserRead]:
    """List every user (admin)."""
    return [UserRead.model_validate(u) for u in await service.list_users(session=session)]


@router.post("/users", response_model=UserRead, status_code=status.HTTP_201_CREATED)
async def create_user(user_in: UserCreate, session: SessionDep, _admin: AdminUser) -> UserRead:
    """Create a user (admin)."""
    return UserRead.model_validate(await service.create(session=session, user_in=user_in))


@router.get("/users/{user_id:int}", response_model=UserRead)
async def get_user(user_id: Id, session: SessionDep, _admin: AdminUser) -> UserRead:
    """Return one user (admin)."""
    return UserRead.model_validate(await service.get_or_raise(session=session, user_id=user_id))


@router.patch("/users/{user_id:int}", response_model=UserRead)
async def update_user(
    user_id: Id, user_in: UserUpdate, session: SessionDep, _admin: AdminUser
) -> UserRead:
    """Change a user's role, details or password, or disable them (admin)."""
    user = await service.get_or_raise(session=session, user_id=user_id)
    return UserRead.model_validate(
        await service.update(session=session, user=user, user_in=user_in)
    )


@router.get("/users/me/tokens", response_model=list[ApiTokenRead])
async def list_tokens(session: SessionDep, user: AnyUser) -> list[ApiTokenRead]:
    """List the caller's personal API tokens (never their values)."""
    return [
        ApiTokenRead.model_validate(t)
        for t in await service.list_tokens(session=session, user=user)
    ]


@router.post("/users/me/tokens", response_model=ApiTokenCreated, status_code=201)
async def create_token(
    token_in: ApiTokenCreate, session: SessionDep, user: AnyUser
) -> ApiTokenCreated:
    """Create a personal API token; its value is shown this once."""
    ttl = dt.timedelta(days=token_in.expires_in_days) if token_in.expires_in_days else None
    value, record = await service.issue_token(
        session=session, user=user, kind=TokenKind.PERSONAL, name=token_in.name, ttl=ttl
    )
    return ApiTokenCreated.model_validate(
        {**ApiTokenRead.model_validate(record).model_dump(), "token": value}
    )


@router.delete("/users/me/tokens/{token_id:int}", response_model=ApiTokenRead)
async def revoke_token(token_id: Id, session: SessionDep, user: AnyUser) -> ApiTokenRead:
    """Revoke one of the caller's tokens."""
    record = await service.revoke_token(session=session, user=user, token_id=token_id)
    return ApiTokenRead.model_validate(record)
