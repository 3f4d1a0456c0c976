"""ASGI middleware: authentication before the body, body size limits, metrics, access logs."""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
import time
from collections.abc import Sequence
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import quote

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from microfactory.accounts import service as account_service
from microfactory.accounts.models import Role
from microfactory.accounts.throttle import LoginThrottle
from microfactory.errors import NotAuthenticatedError

log = logging.getLogger("microfactory.http")

# The multipart upload routes (method, path): only their bodies get the upload limit. Every
# other body (JSON, forms, anything sent to these paths that is not multipart) gets the
# general limit: a 100 MB JSON body to /api/v1/jobs/{id}/priority is refused, not parsed.
UPLOAD_ROUTES = frozenset(
    {
        ("POST", "/api/v1/jobs"),
        ("POST", "/api/v1/designs"),
        ("POST", "/api/v1/designs/import"),
        ("POST", "/jobs/new"),
        ("POST", "/designs/new"),
        ("POST", "/designs/import"),
    }
)
# Dashboard forms that upload one picture, with their own limit (a setting): a machine's
# photo. Their multipart bodies may be that limit plus FORM_ROOM (the CSRF field, the part
# headers); the route itself refuses a picture past the limit with the form and a message,
# and a body past both gets a page in plain words from here (never a JSON error).
PHOTO_ROUTE = re.compile(r"^/admin/machines/(\d+)/photos/?$")
FORM_ROOM = 64 * 1024
# Methods that the Prometheus label keeps by name; any other becomes "other", so made-up
# methods cannot add series without bound.
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SESSION_COOKIE = "mf_session"  # the dashboard's session cookie (microfactory.deps)


def _is_multipart(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return bytes(value).lower().startswith(b"multipart/form-data")
    return False


def is_upload(scope: Scope) -> bool:
    """Return whether a request is a multipart upload to one of the upload routes."""
    path = scope["path"].rstrip("/") or "/"
    if (scope["method"], path) not in UPLOAD_ROUTES:
        return False
    return _is_multipart(scope)


def photo_machine(scope: Scope) -> str | None:
    """Return the machine id of a multipart photo upload (the admin form), else None."""
    if scope["method"] != "POST":
        return None
    match = PHOTO_ROUTE.match(scope["path"])
    if match is None or not _is_multipart(scope):
        return None
    return match.group(1)


def size_text(n: int) -> str:
    """Return a size in the words a person uses: 8 MiB, 512 KiB, 900 bytes."""
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MiB"
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MiB"
    if n >= 1024:
        return f"{n // 1024} KiB"
    return f"{n} bytes"


async def _send_json(
    send: Send, status: int, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),  # the body was not read: do not reuse the connection
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_413(send: Send, limit: int) -> None:
    await _send_json(send, 413, f"request body is larger than the limit of {limit} bytes")


async def _send_photo_413(send: Send, machine_id: str, photo_limit: int) -> None:
    back = f"/admin/machines/{machine_id}#photos"
    await _send_html(
        send,
        413,
        "The photo is too large",
        f"This photo is larger than {size_text(photo_limit)}, the most a machine's photo may "
        "be. Make it smaller (fewer pixels, or saved as a JPEG) and upload it again.",
        (),
        link=(back, "Back to the machine's photos"),
    )


class BodySizeLimit:
    """Refuse bodies over the limit with 413, whether or not Content-Length is sent."""

    def __init__(
        self, app: ASGIApp, max_body: int, max_upload: int, max_photo: int | None = None
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload
        self.max_photo = max_photo

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count body bytes and stop at the limit."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        photo_of = photo_machine(scope) if self.max_photo is not None else None
        if photo_of is not None and self.max_photo is not None:
            limit = self.max_photo + FORM_ROOM
            photo_limit = self.max_photo

            async def refuse(send: Send, limit: int) -> None:
                await _send_photo_413(send, photo_of, photo_limit)

        else:
            limit = self.max_upload if is_upload(scope) else self.max_body
            refuse = _send_413
        declared = 0
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
        received = 0
        started = False
        rejected = False

        async def limited_receive() -> Message:
            nonlocal received, rejected, started
            if rejected:
                return {"type": "http.disconnect"}
            if declared > limit:
                # Refused when the app first asks for the body (after routing and the
                # authentication gate), before a byte of it is read.
                rejected = True
                if not started:
                    started = True
                    await refuse(send, limit)
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Answer now and tell the app the client left: frameworks turn errors
                    # raised while reading a body into a generic 400, which would hide this.
                    rejected = True
                    if not started:
                        started = True
                        await refuse(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return  # the 413 has been sent; drop whatever the app answers
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception:
            if not rejected:
                raise


def _allowed_roles(route: BaseRoute) -> frozenset[Role] | None:
    """Return the roles a route's dependencies admit, or None for a public route.

    A route may declare several role checks (each dependency its own); a caller must pass
    them all, so the roles admitted are their intersection.
    """
    dependant = getattr(route, "dependant", None)
    stack = [dependant] if dependant is not None else []
    allowed: frozenset[Role] | None = None
    while stack:
        current = stack.pop()
        roles = getattr(getattr(current, "call", None), "allowed_roles", None)
        if roles is not None:
            allowed = frozenset(roles) if allowed is None else allowed & frozenset(roles)
        stack.extend(current.dependencies)
    return allowed


def _credential(scope: Scope) -> str | None:
    """Return the bearer token, else the session cookie, as the request dependencies do."""
    cookie_header = b""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = bytes(value).decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"cookie":
            cookie_header = bytes(value)
    if cookie_header:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(cookie_header.decode("latin-1"))
        except CookieError:
            return None
        morsel = jar.get(SESSION_COOKIE)
        if morsel is not None and morsel.value:
            return morsel.value
    return None


class AuthBeforeBody:
    """Refuse unauthenticated writes to protected routes before reading their bodies.

    FastAPI reads and parses a request's body before it resolves the dependencies that
    authenticate the caller, so an anonymous client could make the server receive (and
    parse) a body of any size up to the limit just to be told 401. This middleware steps in
    when the app first asks for the body: routing is done by then, so it knows the route,
    and when the route needs a role it checks the bearer token or session cookie first. No
    valid credential, and the answer (401, or the login page for the dashboard) goes out
    without a byte of the body having been read. The route's own dependencies still run and
    remain the authority; this is only the early gate.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._roles: dict[int, frozenset[Role] | None] = {}

    def _route_roles(self, route: BaseRoute | None) -> frozenset[Role] | None:
        if route is None:
            return None
        if id(route) not in self._roles:
            self._roles[id(route)] = _allowed_roles(route)
        return self._roles[id(route)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the caller's credential when the app first reads a protected route's body."""
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        checked = False
        refused = False
        started = False

        async def gated_receive() -> Message:
            nonlocal checked, refused, started
            if refused:
                return {"type": "http.disconnect"}
            if not checked:
                checked = True
                roles = self._route_roles(scope.get("route"))
                refusal = None if roles is None else await self._refusal(scope, roles)
                if refusal is not None and (refusal[0] == 401 or _is_api(scope)):
                    refused = True
                    if not started:
                        started = True
                        await _send_refusal(send, scope, *refusal)
                    # Tell the app the client left: it stops reading and its answer is dropped.
                    return {"type": "http.disconnect"}
            return await receive()

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, gated_receive, tracking_send)
        except Exception:
            if not refused:
                raise

    async def _refusal(self, scope: Scope, roles: frozenset[Role]) -> tuple[int, str] | None:
        token = _credential(scope)
        if token is None:
            return 401, "not authenticated: send 'Authorization: Bearer <token>'"
        sessionmaker = scope["app"].state.sessionmaker
        async with sessionmaker() as session:
            try:
                user, _ = await account_service.user_for_token(session=session, token=token)
            except NotAuthenticatedError as exc:
                return 401, exc.detail
            role = user.role
            await session.rollback()  # only a look-up: the route records the token's use
        if role not in roles:
            names = ", ".join(sorted(r.value for r in roles))
            return 403, f"this needs one of the roles: {names}"
        return None


def _is_api(scope: Scope) -> bool:
    path: str = scope["path"]
    return path.startswith("/api/")


async def _send_refusal(send: Send, scope: Scope, status: int, detail: str) -> None:
    if _is_api(scope):
        headers = [(b"www-authenticate", b"Bearer")] if status == 401 else []
        await _send_json(send, status, detail, headers)
        return
    # The dashboard sends a logged-out browser to the login page, as LoginRequired does.
    location = "/login?next=" + quote(scope["path"])
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", location.encode()),
                (b"content-length", b"0"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})


LOGIN_PATHS = frozenset({"/api/v1/auth/token", "/login"})


class LoginGate:
    """Answer logins from a locked-out client address with 429, without parsing them.

    Under a flood of guesses from one address, every refused attempt would otherwise cost a
    form parse, a session and an exception on the event loop that also streams G-code; here
    it costs a dictionary look-up and a sleep. Lockouts by username still need the form and
    are checked by the login routes (accounts/service.login).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse a locked-out address's login at once."""
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in LOGIN_PATHS:
            throttle: LoginThrottle | None = getattr(scope["app"].state, "login_throttle", None)
            client = scope.get("client")
            address = client[0] if client else "unknown"
            refusal = await throttle.address_refusal(address) if throttle is not None else None
            if throttle is not None and refusal is not None:
                # Answered late: a sleeping coroutine costs nothing, and a client guessing
                # in a loop is slowed to one guess a second per connection.
                await asyncio.sleep(throttle.refusal_delay_s)
                retry = [(b"retry-after", str(refusal.extra["retry_after_s"]).encode())]
                if scope["path"].startswith("/api/"):
                    await _send_json(send, 429, refusal.detail, retry)
                else:
                    await _send_html(send, 429, "Too many failed logins", refusal.detail, retry)
                return
        await self.app(scope, receive, send)


async def _send_html(
    send: Send,
    status: int,
    title: str,
    detail: str,
    headers: Sequence[tuple[bytes, bytes]],
    link: tuple[str, str] = ("/login", "Back to the login page"),
) -> None:
    text = html.escape(detail)
    href, label = html.escape(link[0]), html.escape(link[1])
    body = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}'
        f'</title></head><body><main><h1>{title}</h1><p role="alert">{text}</p>'
        f'<p><a href="{href}">{label}</a></p></main></body></html>'
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Metrics:
    """Prometheus metrics for one app (its own registry, so tests can build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "microfactory_http_requests_total",
            "HTTP requests by method, route and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "microfactory_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            registry=self.registry,
        )


class RequestMetrics:
    """Count requests and time them by route template (never by raw path: ids explode)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Record the request's route, status and duration."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            name = (
                getattr(route, "path_format", None)
                or getattr(route, "path", None)
                or ("static" if scope["path"].startswith("/static") else "unmatched")
            )
            elapsed = time.perf_counter() - start
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            self.metrics.requests.labels(method, name, str(status)).inc()
            self.metrics.latency.labels(name).observe(elapsed)
            if not scope["path"].startswith(("/static", "/metrics", "/healthz")):
                log.info(
                    "%s %s %s",
                    scope["method"],
                    name,
                    status,
                    extra={"status": status, "duration_ms": round(elapsed * 1000, 1)},
                )
