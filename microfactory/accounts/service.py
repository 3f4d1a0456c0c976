"""Account rules: creating users, checking passwords, issuing and revoking tokens."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.accounts.models import ApiToken, TokenKind, User
from microfactory.accounts.schemas import UserCreate, UserUpdate
from microfactory.accounts.security import (
    hash_password_async,
    needs_rehash,
    new_token,
    token_digest,
    verify_password_async,
)
from microfactory.accounts.throttle import LockoutKind, LoginThrottle
from microfactory.db import utcnow
from microfactory.errors import (
    ConflictError,
    NotAuthenticatedError,
    NotFoundError,
    TooManyRequestsError,
)

log = logging.getLogger("microfactory.accounts")

# One message whether the user exists or not, so a login form does not reveal usernames.
BAD_CREDENTIALS = "incorrect username or password"
BAD_TOKEN = "invalid, expired or revoked token"  # noqa: S105 (an error message)


async def get_by_username(*, session: AsyncSession, username: str) -> User | None:
    """Return the user with this username, or None."""
    result = await session.execute(select(User).where(User.username == username))
    return result.scalar_one_or_none()


async def get_or_raise(*, session: AsyncSession, user_id: int) -> User:
    """Return a user by id or raise NotFoundError."""
    user = await session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"user {user_id} not found")
    return user


async def list_users(*, session: AsyncSession) -> list[User]:
    """Return every user, by username."""
    result = await session.execute(select(User).order_by(User.username))
    return list(result.scalars())


async def create(*, session: AsyncSession, user_in: UserCreate) -> User:
    """Create a user with an argon2-hashed password; refuse a taken username."""
    if await get_by_username(session=session, username=user_in.username) is not None:
        raise ConflictError(f"username {user_in.username!r} is already taken")
    user = User(
        username=user_in.username,
        full_name=user_in.full_name,
        email=user_in.email,
        role=user_in.role,
        trusted=user_in.trusted,
        password_hash=await hash_password_async(user_in.password),
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        raise ConflictError(f"username {user_in.username!r} is already taken") from None
    return user


async def update(*, session: AsyncSession, user: User, user_in: UserUpdate) -> User:
    """Apply an admin's changes to a user; disabling revokes every token."""
    data = user_in.model_dump(exclude_unset=True)
    password = data.pop("password", None)
    for key, value in data.items():
        setattr(user, key, value)
    if password:
        user.password_hash = await hash_password_async(password)
    if user_in.is_active is False or password:
        await revoke_all_tokens(session=session, user=user)
    await session.flush()
    return user


async def authenticate(*, session: AsyncSession, username: str, password: str) -> User:
    """Return the user if the password is right and the account active, else raise 401.

    Call it first in its transaction: the read-only transaction of the look-up is ended
    before the password is checked, because a hash may wait seconds for the hashing pool
    and a login must not hold a pooled database connection (on SQLite, a read lock) that
    long. 16 concurrent wrong logins otherwise took every connection and /healthz waited.
    """
    found = await get_by_username(session=session, username=username)
    user_id = found.id if found is not None else None
    password_hash = found.password_hash if found is not None else None
    if session.in_transaction():
        await session.rollback()  # nothing was written yet; this returns the connection
    ok = await verify_password_async(password_hash, password)
    user = await session.get(User, user_id) if user_id is not None else None
    if user is None or not ok or not user.is_active:
        raise NotAuthenticatedError(BAD_CREDENTIALS)
    if needs_rehash(user.password_hash):
        user.password_hash = await hash_password_async(password)
    return user


async def login(
    *,
    session: AsyncSession,
    throttle: LoginThrottle,
    username: str,
    password: str,
    address: str,
) -> User:
    """Authenticate a login attempt, refusing (429) locked-out usernames and addresses.

    The lockout is checked before the password, so a locked-out guesser costs no hashing.
    """
    try:
        await throttle.check(username=username, address=address)
    except TooManyRequestsError:
        await asyncio.sleep(throttle.refusal_delay_s)  # slows a guessing loop, costs nothing
        raise
    try:
        user = await authenticate(session=session, username=username, password=password)
    except NotAuthenticatedError:
        await throttle.failed(username=username, address=address)
        raise
    await throttle.succeeded(username=username)
    return user


def log_lockout_lifted(*, admin: User, kind: LockoutKind, key: str, was_locked_out: bool) -> None:
    """Record that an admin lifted a login lockout."""
    log.warning(
        "admin %s lifted the login lockout of %s %s (locked out: %s)",
        admin.username,
        kind.value,
        key,
        was_locked_out,
        extra={"event": "login_lockout_lifted"},
    )


async def issue_token(
    *,
    session: AsyncSession,
    user: User,
    kind: TokenKind,
    name: str = "",
    ttl: dt.timedelta | None = None,
) -> tuple[str, ApiToken]:
    """Create a token and return its value (shown once) with its record."""
    value = new_token()
    record = ApiToken(
        user_id=user.id,
        kind=kind,
        name=name,
        token_hash=token_digest(value),
        prefix=value[:10],
        expires_at=utcnow() + ttl if ttl else None,
    )
    session.add(record)
    await session.flush()
    return value, record


async def user_for_token(
    *, session: AsyncSession, token: str, address: str | None = None
) -> tuple[User, ApiToken]:
    """Return the active user a valid token belongs to, or raise 401; note its use."""
    result = await session.execute(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == token_digest(token))
    )
    row = result.one_or_none()
    if row is None:
        raise NotAuthenticatedError(BAD_TOKEN)
    record, user = row
    now = utcnow()
    if record.revoked_at is not None or (record.expires_at and record.expires_at <= now):
        raise NotAuthenticatedError(BAD_TOKEN)
    if not user.is_active:
        raise NotAuthenticatedError(BAD_TOKEN)
    # Write last use at most once a minute: a token used on every request would otherwise
    # turn every read into a write.
    moved = address is not None and address[:64] != record.last_used_from
    if moved or record.last_used_at is None or now - record.last_used_at > dt.timedelta(minutes=1):
        record.last_used_at = now
        if address is not None:
            record.last_used_from = address[:64]
    return user, record


async def list_tokens(*, session: AsyncSession, user: User) -> list[ApiToken]:
    """Return a user's personal tokens, newest first."""
    result = await session.execute(
        select(ApiToken)
        .where(ApiToken.user_id == user.id, ApiToken.kind == TokenKind.PERSONAL)
        .order_by(ApiToken.id.desc())
    )
    return list(result.scalars())


async def revoke_token(*, session: AsyncSession, user: User, token_id: int) -> ApiToken:
    """Revoke one of a user's tokens."""
    record = await session.get(ApiToken, token_id)
    if record is None or record.user_id != user.id:
        raise NotFoundError(f"token {token_id} not found")
    if record.revoked_at is None:
        record.revoked_at = utcnow()
    await session.flush()
    return record


async def revoke_by_value(*, session: AsyncSession, token: str) -> None:
    """Revoke a token given its value (logout)."""
    result = await session.execute(
        select(ApiToken).where(ApiToken.token_hash == token_digest(token))
    )
    record = result.scalar_one_or_none()
    if record is not None and record.revoked_at is None:
        record.revoked_at = utcnow()


async def revoke_all_tokens(*, session: AsyncSession, user: User) -> None:
    """Revoke every token of a user (on disable or password change)."""
    result = await session.execute(
        select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
    )
    now = utcnow()
    for record in result.scalars():
        record.revoked_at = now


async def count_users(*, session: AsyncSession) -> int:
    """Return how many users exist."""
    return int(await session.scalar(select(func.count(User.id))) or 0)
