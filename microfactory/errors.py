"""Domain errors raised by services, and the one handler that maps them to HTTP."""

from __future__ import annotations

from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from microfactory.logs import scrub_internal_names


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


class InvalidInputError(DomainError):
    """The input is well-formed but fails a rule (a G-code file that is not text)."""

    status_code = 422


def install_error_handlers(app: FastAPI) -> None:
    """Map every DomainError to its status code with a JSON `detail`."""

    async def _handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DomainError)
        settings = getattr(request.app.state, "settings", None)
        data_dir = str(settings.data_dir.resolve()) if settings is not None else None
        # Messages never carry our internal stored file names or server paths.
        exc.detail = scrub_internal_names(exc.detail, data_dir)
        html_renderer = getattr(request.app.state, "html_error_renderer", None)
        if html_renderer is not None and not request.url.path.startswith("/api"):
            response: Response = html_renderer(request, exc)
            return response
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}
        if "retry_after_s" in exc.extra:
            headers["Retry-After"] = str(exc.extra["retry_after_s"])
        return JSONResponse(
            {"detail": exc.detail, **exc.extra}, status_code=exc.status_code, headers=headers
        )

    app.add_exception_handler(DomainError, _handle)
