"""Password hashing (argon2id) and token generation."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()  # argon2id with the library's RFC 9106 low-memory profile
TOKEN_PREFIX = "mf_"  # noqa: S105 (a public prefix that makes leaked tokens greppable)

# A real hash to verify against when the user does not exist, so that a wrong username
# takes as long as a wrong password and the two cannot be told apart by timing.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    """Hash a password with argon2id."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Check a password against its hash; a missing user still costs one verification."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# One argon2id hash or verify with these parameters (64 MiB, 3 passes, 4 lanes) costs about
# 170 ms of CPU and 285 ms of wall time on the 2-core development machine under load
# (measured: mean of 30 verifications). On the event loop, which also streams G-code, 16
# concurrent wrong logins stalled /healthz for seconds and slowed a running print to 1.5 %
# of its idle speed (bench/bench_logins.py). So the work runs in its own pool:
# - argon2-cffi releases the GIL while it hashes, so the loop keeps serving;
# - one worker, because one hash already keeps both cores busy with its four lanes: logins
#   queue behind each other instead of multiplying the load;
# - the worker runs at the lowest CPU priority (nice 19; the lane threads argon2 starts
#   inherit it), so hashing uses only the CPU that serving requests and streaming G-code
#   leave over. Failed logins are also throttled (accounts/throttle.py) before they get here.
HASH_NICE = 19


def _lower_priority() -> None:
    # Linux keeps a nice value per thread: this lowers the hashing thread, not the server.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICE)


_HASH_POOL = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="argon2", initializer=_lower_priority
)


async def hash_password_async(password: str) -> str:
    """Hash a password with argon2id in the hashing pool, off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_HASH_POOL, hash_password, password)


async def verify_password_async(password_hash: str | None, password: str) -> bool:
    """Check a password in the hashing pool, off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(
        _HASH_POOL, verify_password, password_hash, password
    )


def needs_rehash(password_hash: str) -> bool:
    """Return whether the hash uses outdated parameters."""
    return _hasher.check_needs_rehash(password_hash)


def new_token() -> str:
    """Return a new random bearer token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """Return the SHA-256 hex digest a token is stored and looked up by."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
