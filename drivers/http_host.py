"""What every driver of a printer behind an HTTP host (OctoPrint, Moonraker, PrusaLink) shares.

- `host_url`: the connection's `url` setting, checked (http or https, with a host).
- `display_url`: the URL without user:password, for messages and logs.
- `safe_upload_name`: a unique file name every host keeps as is.
- `check_ready_to_start` and `program_bytes`: the first steps of every `start`.
- `stop_task`: cancel a background task (a poll loop, a websocket reader) and wait for it.
- `translate_http_error`: httpx errors as DriverErrors an operator can act on; each driver
  first handles what only its host says (its authorisation replies, its 404s).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

import httpx

from drivers.base import (
    DriverError,
    MachineBusy,
    MachineOffline,
    MachineState,
    Program,
    ProtocolError,
    Status,
)


def host_url(value: Any, host: str, shape: str = "http(s)://host[:port][/path]") -> SplitResult:
    """Return the parts of a host's URL setting, or raise a DriverError saying its shape."""
    url = str(value or "").strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DriverError(f"{host} url must be {shape}, got {url!r}")
    return parts


def display_url(url: str) -> str:
    """Return the URL without user:password, for messages and logs."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def safe_upload_name(program: Program) -> str:
    """Return a unique file name a host keeps as is: mf-<name>-<random>.gcode."""
    stem = Path(program.name).stem.lower()
    slug = re.sub(r"[^a-z0-9]+", "-", stem).strip("-")[:40]
    unique = uuid.uuid4().hex[:8]
    return f"mf-{slug}-{unique}.gcode" if slug else f"mf-{unique}.gcode"


def check_ready_to_start(status: Status) -> None:
    """Raise unless the printer is idle: busy, offline and anything else, each said plainly."""
    if status.state in (MachineState.RUNNING, MachineState.PAUSED):
        raise MachineBusy(f"the printer is busy: {status.message}")
    if status.state is MachineState.OFFLINE:
        raise MachineOffline(f"the printer is offline: {status.message}")
    if status.state is not MachineState.IDLE:
        raise DriverError(f"the printer is not ready to print: {status.message}")


async def program_bytes(program: Program) -> bytes:
    """Return the program as the bytes to upload: its file when it has one, else its lines."""
    if program.source is not None:
        return await asyncio.to_thread(program.source.read_bytes)
    return ("\n".join(program.lines) + "\n").encode()


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task, if any, and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _connect_reason(exc: BaseException, host: str) -> str:
    text = str(exc)
    cause: BaseException | None = exc
    while cause is not None:  # httpx says only "All connection attempts failed"
        if isinstance(cause, ConnectionRefusedError):
            text = "Connection refused"
            break
        cause = cause.__cause__ or cause.__context__
    if "refused" in text.lower():
        return f"connection refused (nothing listens there: is {host} running?)"
    if "Name or service not known" in text or "getaddrinfo" in text:
        return "the host name does not resolve"
    return f"the connection failed ({text or type(exc).__name__})"


def status_error(host: str, url: str, action: str, status: int, detail: str) -> DriverError:
    """An HTTP error status no host-specific rule took: unavailable, or a refusal."""
    if status in (502, 503, 504):
        return MachineOffline(
            f"{host} at {url} is not available (HTTP {status}) while {action}"
            f"{': ' + detail if detail else ''}"
        )
    return DriverError(f"{host} refused {action} (HTTP {status}): {detail or 'no details'}")


def translate_http_error(
    exc: BaseException,
    *,
    host: str,
    url: str,
    action: str,
    timeout_hint: str,
    detail: Callable[[httpx.Response], str],
    link_errors: tuple[type[BaseException], ...] = (),
) -> DriverError:
    """Turn an httpx exception (or one of `link_errors`) into a DriverError.

    `timeout_hint` ends the timeout message ("check that ..."); `detail` reads the host's
    error reply. Authorisation and other host-specific statuses are the caller's, first."""
    if isinstance(exc, DriverError):
        return exc
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return MachineOffline(
            f"{host} at {url} did not answer in time while {action}; {timeout_hint}"
        )
    if isinstance(exc, httpx.HTTPStatusError):
        return status_error(host, url, action, exc.response.status_code, detail(exc.response))
    if isinstance(exc, httpx.ConnectError | OSError):
        why = _connect_reason(exc, host)
        return MachineOffline(f"cannot reach {host} at {url} while {action}: {why}")
    if isinstance(exc, (httpx.HTTPError, *link_errors)):
        return MachineOffline(f"the link to {host} at {url} failed while {action}: {exc}")
    if isinstance(exc, ValueError):
        return ProtocolError(f"{host} at {url} answered something that is not JSON ({action})")
    return DriverError(f"{host} at {url} failed while {action}: {exc}")
