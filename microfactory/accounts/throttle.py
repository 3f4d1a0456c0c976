"""Failed-login throttling per username and per client address, with the `limits` library.

Every failed login is counted twice in a moving window: once for the username tried and
once for the client address it came from. When either count reaches its limit, further
logins for that username (or from that address) are refused with 429 and a Retry-After
until the oldest failure leaves the window; the password is not even checked, so a flood of
guesses costs the server no argon2 work. A successful login clears its username's count.

Where the counts live: on SQLite (one process) in memory, with `limits`' own async
MemoryStorage; on PostgreSQL, where several web workers serve one shop, in the
`login_failures` table through `SqlMovingWindowStorage`, a `limits` async storage, so that
N workers allow the configured limit and not N times it. Either way the `limits` moving-window
strategy decides. An admin sees the current lockouts and lifts them (API and dashboard).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

from fastapi import Request
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, MovingWindowSupport, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from sqlalchemy import Table, delete, func, insert, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from microfactory.accounts.models import LoginFailure
from microfactory.config import Settings
from microfactory.errors import TooManyRequestsError

log = logging.getLogger("microfactory.accounts")

_TABLE = cast(Table, LoginFailure.__table__)
MAX_KEY_LENGTH = 128  # usernames are at most 64 characters; a longer one can never log in


class SqlMovingWindowStorage(Storage, MovingWindowSupport):
    """A `limits` async storage for the moving-window strategy, in the `login_failures` table.

    One row per counted hit. `acquire_entry` takes a transaction-scoped advisory lock on the
    key (PostgreSQL), so two workers counting the same username cannot both take the last
    slot; it also deletes the key's rows that left the window. Each call is one short
    transaction of its own: a failed login is counted even when its request rolls back.
    """

    STORAGE_SCHEME = None  # built directly, never from a URI

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__()
        self.engine = engine
        self._postgresql = engine.dialect.name == "postgresql"

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        """Errors of the database driver, which `limits` may wrap."""
        return SQLAlchemyError

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """Count `amount` hits on `key` unless that would pass `limit` within `expiry` s."""
        if amount > limit:
            return False
        now = time.time()
        table = _TABLE
        async with self.engine.begin() as conn:
            if self._postgresql:
                await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})
            await conn.execute(delete(table).where(table.c.key == key, table.c.at < now - expiry))
            count = (
                await conn.execute(select(func.count()).where(table.c.key == key))
            ).scalar_one()
            if count + amount > limit:
                return False
            await conn.execute(insert(table), [{"key": key, "at": now}] * amount)
        return True

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """Return when the window's oldest hit was counted, and how many hits it holds."""
        now = time.time()
        table = _TABLE
        async with self.engine.connect() as conn:
            oldest, count = (
                await conn.execute(
                    select(func.min(table.c.at), func.count()).where(
                        table.c.key == key, table.c.at >= now - expiry
                    )
                )
            ).one()
        return (float(oldest), int(count)) if count else (now, 0)

    async def keys(self, since: float) -> list[str]:
        """Return the keys with hits counted after `since` (for listing lockouts)."""
        table = _TABLE
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(table.c.key).where(table.c.at >= since).distinct())
            return [str(r[0]) for r in rows]

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Count hits without a limit (the fixed-window interface; not used here)."""
        now = time.time()
        table = _TABLE
        async with self.engine.begin() as conn:
            await conn.execute(insert(table), [{"key": key, "at": now}] * amount)
            count = (
                await conn.execute(
                    select(func.count()).where(table.c.key == key, table.c.at >= now - expiry)
                )
            ).scalar_one()
        return int(count)

    async def get(self, key: str) -> int:
        """Return how many hits `key` holds."""
        table = _TABLE
        async with self.engine.connect() as conn:
            count = (
                await conn.execute(select(func.count()).where(table.c.key == key))
            ).scalar_one()
        return int(count)

    async def get_expiry(self, key: str) -> float:
        """Return when `key`'s newest hit was counted (the windows are the strategy's)."""
        table = _TABLE
        async with self.engine.connect() as conn:
            newest = (
                await conn.execute(select(func.max(table.c.at)).where(table.c.key == key))
            ).scalar_one()
        return float(newest) if newest is not None else time.time()

    async def check(self) -> bool:
        """Return whether the database answers."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True

    async def reset(self) -> int | None:
        """Forget every hit; return how many were forgotten."""
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(_TABLE))
        return int(result.rowcount)

    async def clear(self, key: str) -> None:
        """Forget the hits of one key."""
        table = _TABLE
        async with self.engine.begin() as conn:
            await conn.execute(delete(table).where(table.c.key == key))


class LockoutKind(StrEnum):
    """What a lockout is keyed by."""

    USERNAME = "username"
    ADDRESS = "address"


@dataclass(frozen=True)
class Lockout:
    """A username or address that may not log in until `retry_after_s` has passed."""

    kind: LockoutKind
    key: str
    failures: int
    retry_after_s: int
    until: float  # Unix time


class LoginThrottle:
    """Count failed logins and refuse logins for locked-out usernames and addresses."""

    def __init__(
        self,
        *,
        per_username: int,
        per_address: int,
        window_s: int,
        refusal_delay_s: float = 0.0,
        engine: AsyncEngine | None = None,
    ) -> None:
        self.refusal_delay_s = refusal_delay_s
        # Shared through the database when one is given (PostgreSQL: several workers).
        self._sql = SqlMovingWindowStorage(engine) if engine is not None else None
        self._storage: Storage = self._sql if self._sql is not None else MemoryStorage()
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._items: dict[LockoutKind, RateLimitItem] = {
            LockoutKind.USERNAME: RateLimitItemPerSecond(per_username, window_s),
            LockoutKind.ADDRESS: RateLimitItemPerSecond(per_address, window_s),
        }
        self._window_s = window_s
        # Which keys have failures, so that an admin can list lockouts (the memory storage
        # has no listing; the table has); entries older than the window are dropped.
        self._seen: dict[tuple[LockoutKind, str], float] = {}
        self._announced: dict[tuple[LockoutKind, str], float] = {}  # lockouts already logged

    @property
    def shared(self) -> bool:
        """Return whether the counts are shared with other processes (in the database)."""
        return self._sql is not None

    @classmethod
    def from_settings(cls, settings: Settings, engine: AsyncEngine | None = None) -> LoginThrottle:
        """Build the throttle these settings describe (shared on PostgreSQL)."""
        return cls(
            per_username=settings.login_max_failures_per_username,
            per_address=settings.login_max_failures_per_address,
            window_s=settings.login_failure_window_s,
            refusal_delay_s=settings.login_refusal_delay_s,
            engine=engine if settings.is_postgresql else None,
        )

    async def check(self, *, username: str, address: str) -> None:
        """Raise TooManyRequestsError if this username or address is locked out."""
        for kind, key in ((LockoutKind.USERNAME, username), (LockoutKind.ADDRESS, address)):
            refusal = await self._refusal(kind, _key(key), address)
            if refusal is not None:
                raise refusal

    async def address_refusal(self, address: str) -> TooManyRequestsError | None:
        """Return the refusal for a locked-out address, or None (checked before any parsing)."""
        return await self._refusal(LockoutKind.ADDRESS, _key(address), address)

    async def _refusal(
        self, kind: LockoutKind, key: str, address: str
    ) -> TooManyRequestsError | None:
        lockout = await self._lockout(kind, key)
        if lockout is None:
            return None
        # Logged once per lockout, not per refused attempt: a flood must not become a log flood.
        if self._announced.get((kind, key)) != lockout.until:
            self._announced[(kind, key)] = lockout.until
            log.warning(
                "login refused: %s %s is locked out for %s s after %s failed logins",
                kind.value,
                lockout.key,
                lockout.retry_after_s,
                lockout.failures,
                extra={"event": "login_locked_out", "address": address},
            )
        return TooManyRequestsError(
            "too many failed logins; try again in "
            f"{_plural(lockout.retry_after_s, 'second')}, or ask an admin to lift the lockout",
            retry_after_s=lockout.retry_after_s,
        )

    async def failed(self, *, username: str, address: str) -> None:
        """Count a failed login for this username and address."""
        now = time.time()
        self._prune(now)
        for kind, key in ((LockoutKind.USERNAME, username), (LockoutKind.ADDRESS, address)):
            await self._limiter.hit(self._items[kind], kind.value, _key(key))
            self._seen[(kind, _key(key))] = now
        log.info(
            "failed login for username %s from %s",
            _key(username),
            address,
            extra={"event": "login_failed"},
        )

    async def succeeded(self, *, username: str) -> None:
        """Forget a username's failures after a successful login."""
        await self.lift(kind=LockoutKind.USERNAME, key=username)

    async def lift(self, *, kind: LockoutKind, key: str) -> bool:
        """Clear the failures of a username or address; return whether it was locked out."""
        key = _key(key)
        was_locked = await self._lockout(kind, key) is not None
        await self._limiter.clear(self._items[kind], kind.value, key)
        self._seen.pop((kind, key), None)
        self._announced.pop((kind, key), None)
        return was_locked

    async def lockouts(self) -> list[Lockout]:
        """Return the current lockouts, the longest first."""
        now = time.time()
        self._prune(now)
        keys = set(self._seen)
        if self._sql is not None:  # other workers' failures too
            keys |= {
                k for raw in await self._sql.keys(now - self._window_s) if (k := self._parse(raw))
            }
        found = [lk for kind, key in keys if (lk := await self._lockout(kind, key)) is not None]
        return sorted(found, key=lambda lk: (-lk.until, lk.kind, lk.key))

    def _parse(self, raw: str) -> tuple[LockoutKind, str] | None:
        # `limits` keys read "<namespace>/<kind>/<key>/<amount>/<multiples>/<granularity>".
        parts = raw.split("/")
        if len(parts) < 6 or parts[1] not in LockoutKind._value2member_map_:
            return None
        kind = LockoutKind(parts[1])
        key = "/".join(parts[2:-3])
        return (kind, key) if self._items[kind].key_for(kind.value, key) == raw else None

    async def _lockout(self, kind: LockoutKind, key: str) -> Lockout | None:
        item = self._items[kind]
        if await self._limiter.test(item, kind.value, key):
            return None
        stats = await self._limiter.get_window_stats(item, kind.value, key)
        retry = max(1, math.ceil(stats.reset_time - time.time()))
        return Lockout(
            kind=kind,
            key=key,
            failures=item.amount - stats.remaining,
            retry_after_s=retry,
            until=stats.reset_time,
        )

    def _prune(self, now: float) -> None:
        cutoff = now - self._window_s
        for entry in [k for k, at in self._seen.items() if at < cutoff]:
            del self._seen[entry]
            self._announced.pop(entry, None)


def get_throttle(request: Request) -> LoginThrottle:
    """Return the app's failed-login throttle."""
    throttle: LoginThrottle = request.app.state.login_throttle
    return throttle


def client_address(request: Request) -> str:
    """Return the address a request came from (the peer; a proxy's own when behind one)."""
    return request.client.host if request.client else "unknown"


def _key(value: str) -> str:
    return value[:MAX_KEY_LENGTH]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
