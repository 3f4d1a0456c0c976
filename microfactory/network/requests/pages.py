"""Dashboard pages of fabrication requests between shops.

`/network/requests` lists them: B's operators see incoming requests to answer, a member
the requests sent for them. `/network/requests/{id}` shows one with its signed log; at B the
operators accept (with a quote), counter with a date, decline, or report progress there.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from microfactory.deps import SessionDep, shop_tz
from microfactory.designs import service as design_service
from microfactory.designs.models import Visibility
from microfactory.errors import DomainError
from microfactory.network import identity
from microfactory.network.requests import flows, routing, service
from microfactory.network.requests import routes as request_routes
from microfactory.network.requests.schemas import (
    Accept,
    Counter,
    CounterReply,
    Decline,
    Progress,
    SendRequest,
)
from microfactory.usage import reports
from microfactory.web import CsrfChecked, WebMember, WebStaff, redirect, render

router = APIRouter(include_in_schema=False)
PAGE = "/network/requests"


def _now(request: Request) -> dt.datetime:
    clock = getattr(request.app.state, "clock", None)
    return clock() if clock is not None else dt.datetime.now(dt.UTC)


@router.get(PAGE, response_class=HTMLResponse)
async def requests_page(
    request: Request,
    session: SessionDep,
    user: WebMember,
    msg: str | None = None,
    error: str | None = None,
) -> HTMLResponse:
    """List the requests the user may see, and the form to send a design elsewhere."""
    return await _list(request, session, user, msg=msg, error=error)


async def _list(
    request: Request,
    session: Any,
    user: Any,
    *,
    msg: str | None = None,
    error: str | None = None,
    typed: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    rows = await service.list_visible(session=session, user=user)
    statement: list[dict[str, Any]] = []
    month = ""
    if user.is_staff:
        tz = shop_tz(request)
        month = _now(request).astimezone(tz).strftime("%Y-%m")
        start, end = reports.month_bounds(month, tz)
        statement = await service.network_statement(session=session, start=start, end=end)
    designs = [
        d
        for d in await design_service.list_designs(session=session, user=user)
        if d.visibility == Visibility.PUBLIC
    ]
    return render(
        request,
        "network_requests.html",
        {
            "rows": rows,
            "statement": statement,
            "month": month,
            "designs": designs,
            "publish": request.app.state.settings.network_publish,
            "msg": msg,
            "error": error,
            "typed": typed or {},
        },
        status_code=status_code,
    )


@router.post(PAGE + "/send", response_class=HTMLResponse)
async def send_from_page(
    request: Request, session: SessionDep, user: WebMember, _csrf: CsrfChecked
) -> Response:
    """Send a public design to another shop from the form ("make this elsewhere")."""
    form = {k: str(v) for k, v in (await request.form()).items() if k != "csrf_token" and v != ""}
    back_to_new = form.pop("back", "") == "new"
    settings = request.app.state.settings
    shop = await asyncio.to_thread(identity.shop_key, settings.data_dir)
    try:
        body = SendRequest.model_validate(form)
        request_id = await request_routes.send_and_deliver(
            request, session, settings, shop, user, body, _now(request)
        )
    except (ValidationError, DomainError) as exc:
        await session.rollback()
        text = _errors(exc) if isinstance(exc, ValidationError) else exc.detail
        code = 422 if isinstance(exc, ValidationError) else exc.status_code
        if back_to_new and form.get("design_id", "").isdigit():
            query = urlencode({"design_id": form["design_id"], "error": text[:300],
                               "material": form.get("material", ""),
                               "quantity": form.get("quantity", "1")})  # fmt: skip
            return redirect(f"{PAGE}/new?{query}")
        return await _list(request, session, user, error=text, typed=form, status_code=code)
    sent = await _delivery(request, request_id)
    if sent.startswith("Not delivered"):
        done = "Signed and kept here. " + sent
    else:
        done = "Sent; the other shop took it."
    return redirect(f"{PAGE}/{quote(request_id)}?msg=" + quote(done))


@router.get(PAGE + "/new", response_class=HTMLResponse)
async def new_request_page(
    request: Request,
    session: SessionDep,
    user: WebMember,
    design_id: int,
    material: str = "",
    quantity: int = 1,
    radius_km: float = routing.DEFAULT_RADIUS_KM,
    error: str | None = None,
) -> HTMLResponse:
    """Make this elsewhere: the send form for a design, with the hubs' ranked shops."""
    settings = request.app.state.settings
    design = await design_service.get_visible_or_raise(
        session=session, design_id=design_id, user=user
    )
    material = material.strip()[:64]
    quantity = max(1, min(50, quantity))
    radius_km = max(1.0, min(20000.0, radius_km))
    travels = settings.network_publish and design.visibility == Visibility.PUBLIC
    routed = routing.Routed()
    if travels:
        shop = await asyncio.to_thread(identity.shop_key, settings.data_dir)
        routed = await routing.route(
            session=session, settings=settings, design=design, material=material or None,
            quantity=quantity, radius_km=radius_km, own_shop_id=shop.shop_id,
        )  # fmt: skip
    return render(
        request,
        "network_request_new.html",
        {
            "design": design,
            "travels": travels,
            "publish": settings.network_publish,
            "routed": routed,
            "finish_text": routing.finish_text,
            "material": material,
            "quantity": quantity,
            "radius_km": radius_km,
            "due": (_now(request).date() + dt.timedelta(days=14)).isoformat(),
            "error": error,
        },
    )


@router.get(PAGE + "/{request_id}", response_class=HTMLResponse)
async def request_page(
    request_id: str,
    request: Request,
    session: SessionDep,
    user: WebMember,
    msg: str | None = None,
    error: str | None = None,
) -> HTMLResponse:
    """Show a request and every message of its log; the answer forms at the making shop."""
    req = await service.get_visible(session=session, request_id=request_id, user=user)
    return render(
        request,
        "network_request.html",
        {"req": service.to_read(req), "msg": msg, "error": error, "staff": user.is_staff},
    )


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg']}" for e in exc.errors()
    )


@router.post(PAGE + "/{request_id}/reply", response_class=HTMLResponse)
async def reply_from_page(
    request_id: str, request: Request, user: WebMember, _csrf: CsrfChecked
) -> Response:
    """Take or turn down the other shop's counter-offer (the member it is for, or staff)."""
    form = {k: str(v) for k, v in (await request.form()).items() if k != "csrf_token" and v != ""}
    settings = request.app.state.settings
    now = _now(request)
    back = f"{PAGE}/{quote(request_id)}"
    try:
        body = CounterReply.model_validate(form)

        async def sign(session: Any, shop: identity.ShopKey, req: Any) -> None:
            await service.reply_to_counter(
                session=session, settings=settings, shop=shop, req=req, agree=body.agree,
                now=now, reason=body.reason,
            )  # fmt: skip

        await flows.answer(request.app, user=user, request_id=request_id, now=now, sign=sign)
    except (ValidationError, DomainError) as exc:
        text = _errors(exc) if isinstance(exc, ValidationError) else exc.detail
        return redirect(back + "?error=" + quote(text[:300]))
    done = "You agreed to the new date." if body.agree else "You turned the counter-offer down."
    return redirect(back + "?msg=" + quote(done + " " + await _delivery(request, request_id)))


async def _delivery(request: Request, request_id: str) -> str:
    """Say how delivering the last message sent went."""
    async with request.app.state.sessionmaker() as session:
        req = await service._get(session, request_id)
        sent = [m for m in (req.messages if req else []) if m.direction == "sent"]
    if not sent or sent[-1].outbox is None:
        return ""
    item = sent[-1].outbox
    if item.state == "pending":
        return "Not delivered yet (the other shop is away); retrying."
    return f"Sent to the other shop: {item.note or item.state}."


@router.post(PAGE + "/{request_id}/{action}", response_class=HTMLResponse)
async def answer_request(
    request_id: str,
    action: str,
    request: Request,
    user: WebStaff,
    _csrf: CsrfChecked,
) -> Response:
    """Accept, counter, decline or report progress from the page's forms (operators)."""
    form = {k: str(v) for k, v in (await request.form()).items() if k != "csrf_token" and v != ""}
    settings = request.app.state.settings
    now = _now(request)
    back = f"{PAGE}/{quote(request_id)}"
    try:
        if action == "accept":
            body = Accept.model_validate(form)
            await flows.accept(request.app, user=user, request_id=request_id, body=body, now=now)
            kind = "accepted"
        else:
            fields: dict[str, Any]
            if action == "counter":
                c = Counter.model_validate(form)
                await flows.counter(request.app, user=user, request_id=request_id, body=c, now=now)
                kind = "countered"
            else:
                if action == "decline":
                    status, fields = "declined", {"reason": Decline.model_validate(form).reason}
                elif action == "progress":
                    p = Progress.model_validate(form)
                    if (p.status == "finished") != (p.outcome is not None):
                        raise ValueError("a finished request needs an outcome, and only it")
                    status, fields = p.status, {"reason": p.reason, "outcome": p.outcome}
                else:
                    return redirect(back + "?error=" + quote(f"unknown action {action!r}"))

                async def sign_update(session: Any, shop: identity.ShopKey, req: Any) -> None:
                    await service.respond(
                        session=session, settings=settings, shop=shop, req=req,
                        status=status, now=now, **fields,
                    )  # fmt: skip

                await flows.answer(
                    request.app, user=user, request_id=request_id, now=now, sign=sign_update
                )
                kind = status
    except (ValidationError, ValueError, DomainError) as exc:
        if isinstance(exc, ValidationError):
            text = _errors(exc)
        elif isinstance(exc, DomainError):
            text = exc.detail
        else:
            text = str(exc)
        return redirect(back + "?error=" + quote(text[:300]))
    done = f"{kind.capitalize()}. {await _delivery(request, request_id)}"
    return redirect(back + "?msg=" + quote(done[:300]))
