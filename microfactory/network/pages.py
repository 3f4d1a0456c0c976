"""Dashboard page of the network, shop side: the public profile and the push status (admins)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from microfactory.deps import SessionDep
from microfactory.errors import DomainError
from microfactory.machines.schemas import mask_url
from microfactory.network import identity
from microfactory.network import service as network_service
from microfactory.network.schemas import ACCESS_TYPES, ProfileUpdate
from microfactory.web import CsrfChecked, WebAdmin, redirect, render

router = APIRouter(include_in_schema=False)
PAGE = "/network/admin"


def _validation_text(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    )


async def _context(request: Request, session: Any) -> dict[str, Any]:
    settings = request.app.state.settings
    shop = await asyncio.to_thread(identity.shop_key, settings.data_dir)
    profile = await network_service.get_profile(session=session, settings=settings)
    statuses = await network_service.push_statuses(session=session, settings=settings)
    return {
        "profile": profile,
        "shop_id": shop.shop_id,
        "access_types": ACCESS_TYPES,
        "publish": settings.network_publish,
        "pushes": [{"url": mask_url(s.hub_url), "row": s} for s in statuses],
        "ttl_s": settings.network_report_ttl_s,
    }


@router.get(PAGE, response_class=HTMLResponse)
async def network_admin_page(
    request: Request, session: SessionDep, user: WebAdmin, msg: str | None = None
) -> HTMLResponse:
    """Show the shop's public profile form and the push status per hub (admins)."""
    ctx = await _context(request, session)
    return render(request, "network_admin.html", {**ctx, "msg": msg, "error": None})


def _number(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    return float(text)  # ValueError for non-numbers; non-finite refused by the schema


@router.post(PAGE, response_class=HTMLResponse)
async def network_admin_save(
    request: Request, session: SessionDep, user: WebAdmin, _csrf: CsrfChecked
) -> Response:
    """Save the shop's public profile from the form (admins)."""
    form = await request.form()
    typed = {k: str(v) for k, v in form.items() if k != "csrf_token"}
    try:
        try:
            lat, lon = _number(typed.get("lat", "")), _number(typed.get("lon", ""))
        except ValueError:
            raise ValueError("lat and lon must be numbers in degrees, such as 51.05") from None
        profile_in = ProfileUpdate.model_validate(
            {
                "name": typed.get("name", ""),
                "url": typed.get("url", "").strip() or None,
                "city": typed.get("city", ""),
                "country": typed.get("country", ""),
                "lat": lat,
                "lon": lon,
                "roundToCity": typed.get("round_to_city") == "on",
                "accessType": typed.get("access_type", ""),
                "contact": typed.get("contact", ""),
                "description": typed.get("description", ""),
            }
        )
        await network_service.update_profile(
            session=session, settings=request.app.state.settings, profile_in=profile_in
        )
    except (ValidationError, ValueError, DomainError) as exc:
        if isinstance(exc, ValidationError):
            error = _validation_text(exc)
            status = 422
        elif isinstance(exc, DomainError):
            error, status = exc.detail, exc.status_code
        else:
            error, status = str(exc), 422
        await session.rollback()
        ctx = await _context(request, session)
        return render(
            request,
            "network_admin.html",
            {**ctx, "msg": None, "error": error, "typed": typed},
            status_code=status,
        )
    return redirect(PAGE + "?msg=" + quote("Profile saved."))
