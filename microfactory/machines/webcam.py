"""A machine's webcam through our server: its URL and credentials never reach the browser.

An MJPEG stream (`multipart/x-mixed-replace`) is relayed for a bounded time and size, then
ends (the page opens it again); a snapshot is fetched whole, up to a size. Every wait on the
camera has a timeout, and a camera that cannot be reached is a 502 with why. The machine page
asks `probe` first (`/machines/{id}/webcam/status`, always 200) and shows its placeholder
instead of loading a picture that would fail (a failed load is a console error).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from microfactory.errors import DomainError

log = logging.getLogger("microfactory.machines.webcam")

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0  # a camera that sends no frame for this long is gone
STREAM_MAX_S = 300.0  # one relay lasts at most five minutes; the page reconnects
STREAM_MAX_BYTES = 256 * 1024 * 1024
SNAPSHOT_MAX_BYTES = 8 * 1024 * 1024
SNAPSHOT_TOTAL_S = 15.0  # a picture trickled byte by byte must not hold a request forever
CHUNK_BYTES = 64 * 1024


class WebcamUnavailable(DomainError):
    """The camera did not answer, or not with a picture."""

    status_code: ClassVar[int] = 502


@dataclass(frozen=True)
class Camera:
    """Where a camera is, split into a URL without credentials and the credentials."""

    url: str
    auth: tuple[str, str] | None
    shown: str  # for messages: scheme, host and port only

    @classmethod
    def of(cls, url: str) -> Camera:
        """Split a URL such as http://user:pass@cam.local/stream into its parts."""
        parts = urlsplit(url)
        auth = None
        if parts.username is not None:
            auth = (parts.username, parts.password or "")
        netloc = _netloc(url)
        bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        return cls(url=bare, auth=auth, shown=f"{parts.scheme}://{netloc}")


def _netloc(url: str) -> str:
    """Return a URL's host and port, without credentials (IPv6 hosts in brackets)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # not a number: the URL was stored unchecked
        port = None
    return f"{host}:{port}" if port else host


def settings_of(webcam: dict[str, Any] | None) -> dict[str, str]:
    """Return the configured URLs ({"stream_url", "snapshot_url"}), without empty ones."""
    return {k: str(v) for k, v in (webcam or {}).items() if k.endswith("_url") and v}


def masked(webcam: dict[str, Any] | None) -> dict[str, str | None]:
    """Return the URLs as an operator may see them: no user, password or query string."""
    out: dict[str, str | None] = {"stream_url": None, "snapshot_url": None}
    for key, url in settings_of(webcam).items():
        parts = urlsplit(url)
        netloc = _netloc(url)
        if parts.username is not None:
            netloc = "****@" + netloc
        out[key] = urlunsplit((parts.scheme, netloc, parts.path, "****" if parts.query else "", ""))
    return out


def _client() -> httpx.AsyncClient:
    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    # No redirects: the camera is where the operator said, not where it sends us. No proxy
    # from the environment either: cameras are on the shop's own network.
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)


def _unavailable(camera: Camera, why: str) -> WebcamUnavailable:
    return WebcamUnavailable(f"the webcam at {camera.shown} cannot be reached: {why}")


def _why(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "it did not answer in time"
    if isinstance(exc, httpx.ConnectError):
        return "the connection failed"
    return type(exc).__name__


async def snapshot(url: str) -> tuple[bytes, str]:
    """Fetch one picture; return its bytes and content type."""
    camera = Camera.of(url)
    try:
        async with (
            _client() as client,
            asyncio.timeout(SNAPSHOT_TOTAL_S),
            client.stream("GET", camera.url, auth=camera.auth) as resp,
        ):
            if resp.status_code != 200:
                raise _unavailable(camera, f"it answered HTTP {resp.status_code}")
            kind = resp.headers.get("content-type", "")
            if not kind.startswith("image/"):
                what = kind or "no content type"
                raise _unavailable(camera, f"it sent {what}, not a picture")
            body = bytearray()
            async for chunk in resp.aiter_bytes(CHUNK_BYTES):
                body.extend(chunk)
                if len(body) > SNAPSHOT_MAX_BYTES:
                    raise _unavailable(camera, "the picture is larger than 8 MiB")
    except httpx.HTTPError as exc:
        raise _unavailable(camera, _why(exc)) from None
    except TimeoutError:
        raise _unavailable(camera, "the picture took too long") from None
    return bytes(body), kind


PROBE_TIMEOUT_S = 5.0  # the page waits for the answer: a camera slower than this is away


async def probe(url: str, kind: str) -> str | None:
    """Return None when the camera answers with a picture (or a stream), else why not.

    Why not is in words a member may read: never where the camera is. Only the answer's
    status and content type are read, then the connection is closed.
    """
    camera = Camera.of(url)
    wanted = ("image/",) if kind == "snapshot" else ("multipart/x-mixed-replace", "image/")
    timeout = httpx.Timeout(PROBE_TIMEOUT_S, connect=PROBE_TIMEOUT_S)
    try:
        async with (
            httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client,
            asyncio.timeout(PROBE_TIMEOUT_S + 1),
            client.stream("GET", camera.url, auth=camera.auth) as resp,
        ):
            if resp.status_code != 200:
                return f"it answered HTTP {resp.status_code}"
            content_type = resp.headers.get("content-type", "")
            if not content_type.startswith(wanted):
                return f"it sent {content_type or 'no content type'}, not a picture"
    except httpx.HTTPError as exc:
        return _why(exc)
    except TimeoutError:
        return "it did not answer in time"
    return None


async def open_stream(url: str) -> tuple[str, AsyncIterator[bytes]]:
    """Connect to an MJPEG stream; return its content type and a bounded relay of its bytes.

    Connecting happens here, before any byte is sent to the browser, so that a camera that
    is away is reported as such (502) rather than as a stream that never starts.
    """
    camera = Camera.of(url)
    client = _client()
    try:
        request = client.build_request("GET", camera.url)
        resp = await client.send(request, auth=camera.auth, stream=True)
    except httpx.HTTPError as exc:
        await client.aclose()
        raise _unavailable(camera, _why(exc)) from None
    kind = resp.headers.get("content-type", "")
    if resp.status_code != 200 or not (
        kind.startswith("multipart/x-mixed-replace") or kind.startswith("image/")
    ):
        await resp.aclose()
        await client.aclose()
        why = (
            f"it answered HTTP {resp.status_code}"
            if resp.status_code != 200
            else f"it sent {kind or 'no content type'}, not an MJPEG stream"
        )
        raise _unavailable(camera, why)

    async def relay() -> AsyncIterator[bytes]:
        sent = 0
        ends_at = time.monotonic() + STREAM_MAX_S
        try:
            async for chunk in resp.aiter_raw():  # as it comes: a frame must not wait
                yield chunk
                sent += len(chunk)
                if sent >= STREAM_MAX_BYTES or time.monotonic() >= ends_at:
                    break
        except httpx.HTTPError as exc:  # the camera went away mid-stream: end the relay
            log.info("webcam %s: stream ended: %s", camera.shown, _why(exc))
        finally:
            with contextlib.suppress(Exception):
                await resp.aclose()
            await client.aclose()

    return kind, relay()
