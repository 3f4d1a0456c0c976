"""Dashboard plumbing: templates, the logged-in user, CSRF tokens and role gates."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from microfactory import resources
from microfactory.accounts import service as account_service
from microfactory.accounts.models import Role, User
from microfactory.deps import CSRF_COOKIE, SESSION_COOKIE, SessionDep, check_csrf
from microfactory.errors import NotAuthenticatedError, PermissionDeniedError
from microfactory.logs import scrub_internal_names, scrub_paths
from microfactory.notifications import service as notification_service

TEMPLATES_DIR = resources.web_dir() / "templates"
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
# `{{ job.failure_reason | scrub }}`: no server paths or stored file names on a page.
templates.env.filters["scrub"] = lambda v: scrub_paths(v) if isinstance(v, str) else v


@dataclass(frozen=True)
class Viewer:
    """Who is looking at a page; a plain copy, usable after the session has closed."""

    id: int
    username: str
    role: Role


class LoginRequired(Exception):
    """The dashboard needs a login: redirect to the login page."""


def csrf_token(request: Request) -> str:
    """Return the CSRF token of this browser, creating one if needed."""
    token = request.cookies.get(CSRF_COOKIE) or getattr(request.state, "new_csrf", None)
    if not token:
        token = secrets.token_urlsafe(32)
        request.state.new_csrf = token
    return token


def render(
    request: Request, template: str, context: dict[str, Any] | None = None, status_code: int = 200
) -> HTMLResponse:
    """Render a page, setting the CSRF cookie when the browser has none yet."""
    token = csrf_token(request)
    ctx = {
        "request": request,
        "csrf_token": token,
        "user": getattr(request.state, "viewer", None),
        "unread": getattr(request.state, "unread", 0),
    }
    ctx.update(context or {})
    # Error messages shown on a page never carry internal stored file names or paths.
    data_dir = str(request.app.state.settings.data_dir.resolve())
    for key in ("error", "detail", "msg"):
        value = ctx.get(key)
        if isinstance(value, str):
            ctx[key] = scrub_internal_names(value, data_dir)
    response = templates.TemplateResponse(request, template, ctx, status_code=status_code)
    if request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(
            CSRF_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.app.state.settings.secure_cookies,
        )
    return response


async def web_user(request: Request, session: SessionDep) -> User:
    """Return the user of the session cookie, or send the browser to the login page."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise LoginRequired
    try:
        user, _ = await account_service.user_for_token(
            session=session,
            token=token,
            address=request.client.host if request.client else None,
        )
    except NotAuthenticatedError:
        raise LoginRequired from None
    request.state.viewer = Viewer(id=user.id, username=user.username, role=user.role)
    # The menu's unread badge on every page.
    request.state.unread = await notification_service.unread_count(session=session, user_id=user.id)
    return user


def web_roles(*roles: Role) -> Any:
    """Return a dependency admitting only these roles to a dashboard page."""
    allowed = frozenset(roles)

    async def _check(request: Request, user: Annotated[User, Depends(web_user)]) -> User:
        if user.role not in allowed:
            raise PermissionDeniedError("your role cannot open this page")
        return user

    _check.allowed_roles = allowed  # type: ignore[attr-defined]  # read by the route audit test
    return _check


async def verify_form_csrf(request: Request) -> None:
    """Refuse a dashboard form post whose CSRF token does not match the cookie's."""
    form = await request.form()
    value = form.get("csrf_token")
    check_csrf(request, value if isinstance(value, str) else None)


WebMember = Annotated[User, Depends(web_roles(Role.MEMBER, Role.OPERATOR, Role.ADMIN))]
WebStaff = Annotated[User, Depends(web_roles(Role.OPERATOR, Role.ADMIN))]
WebAdmin = Annotated[User, Depends(web_roles(Role.ADMIN))]
CsrfChecked = Annotated[None, Depends(verify_form_csrf)]


def redirect(url: str) -> RedirectResponse:
    """Redirect after a form post (303: the browser follows with GET)."""
    return RedirectResponse(url, status_code=303)
