"""Asking this shop's hubs where a design can be made ("make this elsewhere").

The send form asks each configured hub `POST /api/v1/network/route` with the design's
content hash, near this shop's own location. A hub that does not hold the design itself
cannot read its requirements from the hash (404, or 422 for what is missing), so the form
asks again with the fields read from the design here: the process and size from its files'
analysis, the material the member chose. The answers are merged, best first.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.config import Settings
from microfactory.designs import remote
from microfactory.designs.models import Design
from microfactory.machines.schemas import mask_url
from microfactory.network import service as network_service

log = logging.getLogger("microfactory.network.requests")

ROUTE_PATH = "/api/v1/network/route"
TIMEOUT = httpx.Timeout(10.0, connect=3.0)
DEFAULT_RADIUS_KM = 500.0


@dataclass
class Routed:
    """What the hubs answered: ranked shops (best first), the excluded, and problems."""

    shops: list[dict[str, Any]] = field(default_factory=list)
    excluded: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    asked: bool = False  # False: no hub is configured, or this shop has no location


def requirements(design: Design) -> dict[str, Any]:
    """Return the process and outer size (mm) a design's files' analysis gives, if any."""
    found: dict[str, Any] = {}
    for f in design.files:
        analysis = f.analysis if isinstance(f.analysis, dict) else {}
        box = analysis.get("bbox_mm")
        if f.kind in ("stl", "3mf", "gcode") and isinstance(box, dict) and "size_mm" not in found:
            try:
                found["size_mm"] = {
                    a: round(max(0.0, float(box[f"max_{a}"]) - float(box[f"min_{a}"])), 3)
                    for a in "xyz"
                }
            except (KeyError, TypeError, ValueError):
                continue
            kind = str(analysis.get("process") or "")
            found["process"] = "laser_cutting" if "laser" in kind else "fdm_printing"
        elif f.kind in ("svg", "dxf"):
            found.setdefault("process", "laser_cutting")
    return found


def _sort_key(shop: dict[str, Any]) -> tuple[str, float]:
    return (str(shop.get("earliest_finish") or "9999"), float(shop.get("distance_km") or 0))


async def route(
    *,
    session: AsyncSession,
    settings: Settings,
    design: Design,
    material: str | None,
    quantity: int,
    radius_km: float = DEFAULT_RADIUS_KM,
    own_shop_id: str | None = None,
) -> Routed:
    """Ask every configured hub where the design can be made, near this shop."""
    out = Routed()
    hubs = [h.rstrip("/") for h in settings.network_hubs]
    profile = await network_service.get_profile(session=session, settings=settings)
    if not hubs:
        out.problems.append("no hub is configured (MICROFACTORY_NETWORK_HUBS)")
        return out
    if profile.lat is None or profile.lon is None:
        out.problems.append("this shop's profile has no location (Network page): routing")
        return out
    out.asked = True
    base: dict[str, Any] = {
        "near": {"lat": profile.lat, "lon": profile.lon},
        "radius_km": radius_km,
        "quantity": quantity,
    }
    if material:
        base["material"] = material
    fields = requirements(design)
    seen: set[str] = set()
    async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False, trust_env=False) as c:
        for hub in hubs:
            try:
                url = remote.check_url(hub) + ROUTE_PATH
                await remote._check_host(url)
                resp = await c.post(url, json={**base, "design_hash": design.content_hash})
                if resp.status_code in (404, 422) and fields:
                    # The hub does not hold the design: give it what the design says here.
                    resp = await c.post(url, json={**base, **fields})
                body = resp.json() if resp.status_code == 200 else None
                if not isinstance(body, dict):
                    detail = _detail(resp)
                    out.problems.append(f"{mask_url(hub)}: HTTP {resp.status_code} {detail}")
                    continue
            except (httpx.HTTPError, ValueError, remote.RemoteError) as exc:
                text = getattr(exc, "detail", None) or type(exc).__name__
                out.problems.append(f"{mask_url(hub)}: {text}")
                continue
            for shop in body.get("shops") or []:
                if isinstance(shop, dict) and shop.get("shop_id") not in seen | {own_shop_id}:
                    seen.add(str(shop.get("shop_id")))
                    out.shops.append({**shop, "hub": hub})
            for shop in body.get("excluded") or []:
                if isinstance(shop, dict) and shop.get("shop_id") != own_shop_id:
                    out.excluded.append(shop)
    out.shops.sort(key=_sort_key)
    return out


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return ""
    return str(body.get("detail", ""))[:200] if isinstance(body, dict) else ""


def finish_text(value: Any) -> str:
    """Return an earliest finish as the page shows it."""
    try:
        when = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
