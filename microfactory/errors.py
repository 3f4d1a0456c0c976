"""Domain errors raised by services, and the one handler that maps them to HTTP."""

from __future__ import annotations

import errno
import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from microfactory.logs import scrub_internal_names

log = logging.getLogger("microfactory.errors")

# Paths that answer JSON (or plain text) whatever went wrong; every other path is the
# dashboard, where a person reads the error in a page.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
_MACHINE_PATHS = ("/api/", "/static/", "/metrics", "/healthz", "/openapi.json")


class DomainError(Exception):
    """A rule of the shop refused something; the message says which rule and what to do."""

    status_code: ClassVar[int] = 400

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class BadRequestError(DomainError):
    """The request is malformed in a way the schema cannot express."""

    status_code = 400


class NotAuthenticatedError(DomainError):
    """No valid credentials were given."""

    status_code = 401


class PermissionDeniedError(DomainError):
    """The caller's role does not allow this."""

    status_code = 403


class NotFoundError(DomainError):
    """The thing asked for does not exist (or the caller may not know it exists)."""

    status_code = 404


class ConflictError(DomainError):
    """The request conflicts with the current state (a duplicate name, a busy machine)."""

    status_code = 409


class PayloadTooLargeError(DomainError):
    """An upload or body is over the configured limit."""

    status_code = 413


class TooManyRequestsError(DomainError):
    """Too many attempts (failed logins); `retry_after_s` says when to try again."""

    status_code = 429


class InsufficientStorageError(DomainError):
    """The server's disk is full (or a file size limit was hit): nothing was stored."""

    status_code = 507


# ENOSPC: no space left; EDQUOT: a disk quota; EFBIG: a file size limit (RLIMIT_FSIZE).
STORAGE_FULL_ERRNOS: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
STORAGE_FULL_MESSAGE = (
    "the server's storage is full, so this was not stored (nothing of it was kept); "
    "ask an operator to free disk space, then try again"
)


def storage_full(exc: BaseException) -> InsufficientStorageError | None:
    """Return the 507 for an OSError that says the disk is full, else None."""
    if isinstance(exc, OSError) and exc.errno in STORAGE_FULL_ERRNOS:
        return InsufficientStorageError(STORAGE_FULL_MESSAGE)
    return None


class InvalidInputError(DomainError):
    """The input is well-formed but fails a rule (a G-code file that is not text)."""

    status_code = 422


def _for_a_person(request: Request) -> bool:
    return not request.url.path.startswith(_MACHINE_PATHS) and request.url.path != "/api"


def _field(loc: Any) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "form")]
    return ".".join(parts) or "request"


def validation_messages(exc: RequestValidationError) -> str:
    """Say in one line which fields were refused and why (for the dashboard's pages)."""
    return "; ".join(f"{_field(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors())


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette reports only the first route's)."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    """Map every DomainError to its status code with a JSON `detail` (a page on the dashboard).

    Also: request validation errors as `{"detail": [{loc, msg, type}]}`; a 405 whose `Allow`
    header lists every method of the path; unknown dashboard URLs as a page, not JSON.
    """

    def _page(request: Request, exc: DomainError) -> Response | None:
        html_renderer = getattr(request.app.state, "html_error_renderer", None)
        if html_renderer is None or not _for_a_person(request):
            return None
        response: Response = html_renderer(request, exc)
        return response

    async def _handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DomainError)
        settings = getattr(request.app.state, "settings", None)
        data_dir = str(settings.data_dir.resolve()) if settings is not None else None
        # Messages never carry our internal stored file names or server paths.
        exc.detail = scrub_internal_names(exc.detail, data_dir)
        page = _page(request, exc)
        if page is not None:
            return page
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}
        if "retry_after_s" in exc.extra:
            headers["Retry-After"] = str(exc.extra["retry_after_s"])
        return JSONResponse(
            {"detail": exc.detail, **exc.extra}, status_code=exc.status_code, headers=headers
        )

    async def _validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        page = _page(request, InvalidInputError(validation_messages(exc)))
        if page is not None:
            return page
        errors = []
        for err in exc.errors():
            item = {k: err[k] for k in ("loc", "msg", "type") if k in err}
            errors.append(item)
        return JSONResponse({"detail": errors}, status_code=422)

    async def _http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 405:
            headers = {**(exc.headers or {}), "Allow": ", ".join(_allowed_methods(request))}
            exc = StarletteHTTPException(405, detail=exc.detail, headers=headers)
        if exc.status_code == 404 and _for_a_person(request):
            page = _page(request, NotFoundError(f"there is no page at {request.url.path}"))
            if page is not None:
                return page
        return await http_exception_handler(request, exc)

    async def _os_error(request: Request, exc: Exception) -> Response:
        # A full disk anywhere under a request (an upload's spool, a tool's output, SQLite)
        # is a 507 with a message; any other OSError stays a server error.
        full = storage_full(exc)
        if full is None:
            raise exc
        log.error("storage full while serving %s %s: %s", request.method, request.url.path, exc)
        return await _handle(request, full)

    app.add_exception_handler(DomainError, _handle)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


# What every operation may answer besides its own responses, as README's API section says.
_ERROR_STATUSES: dict[int, str] = {
    400: "The request cannot be read (a malformed body)",
    401: "No valid credentials",
    403: "The caller's role does not allow this",
    404: "Not found, or not the caller's to see",
    409: "Conflicts with the current state",
    422: "Refused input: the fields and rules that failed",
}
_BODY_STATUSES: dict[int, str] = {
    413: "The body is over the configured limit",
    507: "The server's storage is full; nothing was stored",
}
_THROTTLED: dict[int, str] = {429: "Too many attempts; retry after the Retry-After header"}


def document_errors(app: FastAPI) -> None:
    """Add the error responses every operation can give to the OpenAPI document.

    Errors are `{"detail": ...}`: a message, or for refused fields a list of `{loc, msg, type}`.
    Schemathesis (tests/fuzz) checks every answer against this document.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault(
            "ValidationError",
            {
                "type": "object",
                "properties": {
                    "loc": {
                        "type": "array",
                        "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                    },
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
                "required": ["loc", "msg", "type"],
            },
        )
        detail = {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}},
            ],
            "title": "Detail",
        }
        schemas["Error"] = {
            "type": "object",
            "properties": {"detail": detail},
            "required": ["detail"],
            "title": "Error",
        }
        # FastAPI's own 422 schema says a list; domain rules answer a message.
        schemas["HTTPValidationError"] = schemas["Error"]
        _resolve_local_defs(schema, schemas)
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                statuses = dict(_ERROR_STATUSES)
                if "requestBody" in operation:
                    statuses.update(_BODY_STATUSES)
                if path.endswith("/auth/token") and method == "post":
                    statuses.update(_THROTTLED)
                responses = operation.setdefault("responses", {})
                for status, description in statuses.items():
                    responses.setdefault(
                        str(status),
                        {
                            "description": description,
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Error"}
                                }
                            },
                        },
                    )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _resolve_local_defs(node: Any, schemas: dict[str, Any]) -> None:
    """Point pydantic's "#/$defs/X" (left in hand-written request bodies) at the components."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in schemas:
            node["$ref"] = "#/components/schemas/" + ref[8:]
        for value in node.values():
            _resolve_local_defs(value, schemas)
    elif isinstance(node, list):
        for value in node:
            _resolve_local_defs(value, schemas)
