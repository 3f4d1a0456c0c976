"""Failed-login throttling per username and per client address, with the `limits` library.

Every failed login is counted twice in a moving window: once for the username tried and
once for the client address it came from. When either count reaches its limit, further
logins for that username (or from that address) are refused with 429 and a Retry-After
until the oldest failure leaves the window; the password is not even checked, so a flood of
guesses costs the server no argon2 work. A successful login clears its username's count.

The counters live in this process's memory: with several web workers each keeps its own,
so the effective limit is the configured one times the number of workers. An admin sees
the current lockouts and lifts them (API and dashboard).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from enum import StrEnum

from fastapi import Request
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from microfactory.config import Settings
from microfactory.errors import TooManyRequestsError

log = logging.getLogger("microfactory.accounts")

MAX_KEY_LENGTH = 128  # usernames are at most 64 characters; a longer one can never log in


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
        self, *, per_username: int, per_address: int, window_s: int, refusal_delay_s: float = 0.0
    ) -> None:
        self.refusal_delay_s = refusal_delay_s
        self._storage = MemoryStorage()
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._items: dict[LockoutKind, RateLimitItem] = {
            LockoutKind.USERNAME: RateLimitItemPerSecond(per_username, window_s),
            LockoutKind.ADDRESS: RateLimitItemPerSecond(per_address, window_s),
        }
        self._window_s = window_s
        # Which keys have failures, so that an admin can list lockouts (the storage has no
        # listing); entries older than the window are dropped.
        self._seen: dict[tuple[LockoutKind, str], float] = {}
        self._announced: dict[tuple[LockoutKind, str], float] = {}  # lockouts already logged
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> LoginThrottle:
        """Build the throttle these settings describe."""
        return cls(
            per_username=settings.login_max_failures_per_username,
            per_address=settings.login_max_failures_per_address,
            window_s=settings.login_failure_window_s,
            refusal_delay_s=settings.login_refusal_delay_s,
        )

    def check(self, *, username: str, address: str) -> None:
        """Raise TooManyRequestsError if this username or address is locked out."""
        for kind, key in ((LockoutKind.USERNAME, username), (LockoutKind.ADDRESS, address)):
            refusal = self._refusal(kind, _key(key), address)
            if refusal is not None:
                raise refusal

    def address_refusal(self, address: str) -> TooManyRequestsError | None:
        """Return the refusal for a locked-out address, or None (checked before any parsing)."""
        return self._refusal(LockoutKind.ADDRESS, _key(address), address)

    def _refusal(self, kind: LockoutKind, key: str, address: str) -> TooManyRequestsError | None:
        lockout = self._lockout(kind, key)
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

    def failed(self, *, username: str, address: str) -> None:
        """Count a failed login for this username and address."""
        now = time.time()
        with self._lock:
            self._prune(now)
            for kind, key in ((LockoutKind.USERNAME, username), (LockoutKind.ADDRESS, address)):
                self._limiter.hit(self._items[kind], kind.value, _key(key))
                self._seen[(kind, _key(key))] = now
        log.info(
            "failed login for username %s from %s",
            _key(username),
            address,
            extra={"event": "login_failed"},
        )

    def succeeded(self, *, username: str) -> None:
        """Forget a username's failures after a successful login."""
        self.lift(kind=LockoutKind.USERNAME, key=username)

    def lift(self, *, kind: LockoutKind, key: str) -> bool:
        """Clear the failures of a username or address; return whether it was locked out."""
        key = _key(key)
        was_locked = self._lockout(kind, key) is not None
        self._limiter.clear(self._items[kind], kind.value, key)
        with self._lock:
            self._seen.pop((kind, key), None)
            self._announced.pop((kind, key), None)
        return was_locked

    def lockouts(self) -> list[Lockout]:
        """Return the current lockouts, the longest first."""
        with self._lock:
            self._prune(time.time())
            keys = list(self._seen)
        found = [lk for kind, key in keys if (lk := self._lockout(kind, key)) is not None]
        return sorted(found, key=lambda lk: (-lk.until, lk.kind, lk.key))

    def _lockout(self, kind: LockoutKind, key: str) -> Lockout | None:
        item = self._items[kind]
        if self._limiter.test(item, kind.value, key):
            return None
        stats = self._limiter.get_window_stats(item, kind.value, key)
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
