"""The hub's Network page: the shops it knows, "where can I make this?", and pending pins."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from microfactory.accounts.models import Role
from microfactory.deps import Now, SessionDep
from microfactory.errors import DomainError, NotFoundError
from microfactory.network.hub import requirements, routing, service
from microfactory.network.hub.models import PinStatus
from microfactory.network.hub.schemas import RouteRequest
from microfactory.web import CsrfChecked, WebAdmin, WebMember, redirect, render

router = APIRouter(include_in_schema=False)
MATERIALS = ("PLA", "PETG", "ABS", "TPU", "plywood", "acrylic", "MDF", "aluminium", "wood")


def _hub(request: Request) -> None:
    if not request.app.state.settings.hub:
        raise NotFoundError("this server is not a hub (MICROFACTORY_HUB=true makes it one)")


async def _context(
    request: Request, session: SessionDep, now: dt.datetime, user: Any, form: dict[str, Any]
) -> dict[str, Any]:
    rows = await service.list_shops(session=session, now=now)
    try:
        lat, lon = float(form.get("lat") or "nan"), float(form.get("lon") or "nan")
    except ValueError:
        lat = lon = float("nan")
    if lat != lat and rows:  # no point given: the middle of the shops known
        lat = sum(r.lat for r in rows) / len(rows)
        lon = sum(r.lon for r in rows) / len(rows)
        form.setdefault("lat", f"{lat:.4f}")
        form.setdefault("lon", f"{lon:.4f}")
    shops = []
    for r in rows:
        view = service.shop_view(r, now)
        view["distance_km"] = (
            round(routing.haversine_km(lat, lon, r.lat, r.lon), 1) if lat == lat else None
        )
        shops.append(view)
    shops.sort(key=lambda s: (s["expired"], s["distance_km"] or 0.0, s["name"].lower()))
    pins = []
    if user.role is Role.ADMIN:
        pins = [
            p
            for p in await service.list_pins(session=session)
            if p.status is not PinStatus.APPROVED
        ]
    return {
        "shops": shops,
        "pins": pins,
        "form": form,
        "materials": MATERIALS,
        "answer": None,
        "error": None,
        "map_points": [
            {"name": s["name"], "lat": s["lat"], "lon": s["lon"], "expired": s["expired"]}
            for s in shops
        ],
    }


@router.get("/network", response_class=HTMLResponse)
async def network_page(
    request: Request,
    session: SessionDep,
    now: Now,
    user: WebMember,
    design_hash: str | None = None,
) -> HTMLResponse:
    """Show the shops this hub knows and the routing form (a design's page links here)."""
    _hub(request)
    form: dict[str, Any] = {"quantity": "1", "radius_km": "100"}
    if design_hash:
        form["design_hash"] = design_hash
    return render(request, "network.html", await _context(request, session, now, user, form))


@router.post("/network", response_class=HTMLResponse)
async def network_route(
    request: Request,
    session: SessionDep,
    now: Now,
    user: WebMember,
    _csrf: CsrfChecked,
    lat: Annotated[str, Form(max_length=32)] = "",
    lon: Annotated[str, Form(max_length=32)] = "",
    radius_km: Annotated[str, Form(max_length=32)] = "100",
    process: Annotated[str, Form(max_length=32)] = "",
    material: Annotated[str, Form(max_length=64)] = "",
    x: Annotated[str, Form(max_length=32)] = "",
    y: Annotated[str, Form(max_length=32)] = "",
    z: Annotated[str, Form(max_length=32)] = "",
    quantity: Annotated[str, Form(max_length=16)] = "1",
    deadline: Annotated[str, Form(max_length=32)] = "",
    design_hash: Annotated[str, Form(max_length=64)] = "",
) -> HTMLResponse:
    """Answer "where can I make this?" on the page, with the reasons."""
    _hub(request)
    form = {
        "lat": lat, "lon": lon, "radius_km": radius_km, "process": process,
        "material": material, "x": x, "y": y, "z": z, "quantity": quantity,
        "deadline": deadline, "design_hash": design_hash,
    }  # fmt: skip
    ctx = await _context(request, session, now, user, dict(form))
    body: dict[str, Any] = {
        "near": {"lat": lat, "lon": lon},
        "radius_km": radius_km or 100,
        "quantity": quantity or 1,
    }
    if process:
        body["process"] = process
    if material:
        body["material"] = material
    if x or y or z:
        body["size_mm"] = {"x": x or 0, "y": y or 0, "z": z or 0}
    if deadline:
        body["deadline"] = deadline if deadline[-1:] == "Z" or "+" in deadline else deadline + "Z"
    if design_hash:
        body["design_hash"] = design_hash.strip()
    try:
        req = await requirements.resolve(session=session, request=RouteRequest.model_validate(body))
        ctx["answer"] = await routing.route(session=session, req=req, now=now)
    except ValidationError as exc:
        ctx["error"] = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return render(request, "network.html", ctx, status_code=422)
    except DomainError as exc:
        ctx["error"] = exc.detail
        return render(request, "network.html", ctx, status_code=exc.status_code)
    return render(request, "network.html", ctx)


@router.post("/network/pins/{shop_id}/{action}")
async def pin_action(
    request: Request,
    session: SessionDep,
    now: Now,
    admin: WebAdmin,
    _csrf: CsrfChecked,
    shop_id: str,
    action: str,
) -> Response:
    """Approve or revoke a shop's key from the Network page (admin)."""
    _hub(request)
    if action == "approve":
        await service.approve(
            session=session,
            shop_id=shop_id,
            admin=admin.username,
            settings=request.app.state.settings,
            now=now,
        )
    elif action == "revoke":
        await service.revoke(session=session, shop_id=shop_id, admin=admin.username, now=now)
    else:
        raise NotFoundError(f"there is no pin action {action!r}")
    return redirect("/network")
