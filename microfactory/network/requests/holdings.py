"""This shop's public designs, told to its hubs; and which shops hold a design.

With network publishing on and hubs configured, the scheduler's outbox job signs the list
of public designs (`microfactory.designs/1`, see network/hub/designs.py) and pushes it to
every hub when it changed, and again every REFRESH_S (a hub that lost it, or was down,
learns it again). A design page asks the hubs which shops hold its hash
(`GET /api/v1/network/requests/holders/{hash}` here, which reads every hub's answer).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from typing import Any

import httpx
import rfc8785
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory.config import Settings
from microfactory.designs import remote
from microfactory.designs.models import Design, Visibility
from microfactory.machines.schemas import mask_url
from microfactory.network import identity, report
from microfactory.network import service as network_service
from microfactory.network.hub import designs as hub_designs
from microfactory.network.requests import signing

log = logging.getLogger("microfactory.network.requests")

REFRESH_S = 600.0  # push the unchanged list again this often
TTL_S = 86400
TIMEOUT = httpx.Timeout(10.0, connect=3.0)
_last: dict[str, tuple[str, float]] = {}  # hub → (fingerprint pushed, monotonic time)


async def public_designs(*, session: AsyncSession) -> list[dict[str, str]]:
    """Return this shop's public designs as the list names them."""
    rows = (
        await session.execute(
            select(Design.content_hash, Design.title, Design.licence)
            .where(Design.visibility == Visibility.PUBLIC.value)
            .order_by(Design.content_hash)
            .limit(hub_designs.MAX_DESIGNS)
        )
    ).all()
    return [{"hash": h, "title": t or "", "licence": lic or ""} for h, t, lic in rows]


async def push_if_due(*, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> int:
    """Push the design list to every hub where it changed or is due; return how many."""
    if not settings.network_publish or not settings.network_hubs:
        return 0
    async with sessionmaker() as session:
        listed = await public_designs(session=session)
    fingerprint = hashlib.sha256(rfc8785.dumps(listed)).hexdigest()
    clock = time.monotonic()
    due = [
        hub.rstrip("/")
        for hub in settings.network_hubs
        if _last.get(hub.rstrip("/"), ("", -REFRESH_S))[0] != fingerprint
        or clock - _last[hub.rstrip("/")][1] >= REFRESH_S
    ]
    if not due:
        return 0
    shop = await asyncio.to_thread(identity.shop_key, settings.data_dir)
    now = dt.datetime.now(dt.UTC)
    async with sessionmaker() as session, session.begin():
        profile = await network_service.get_profile(session=session, settings=settings)
        sequence = await report.next_sequence(session=session, now=now)
    issued, expires = signing.times(now, TTL_S)
    token = signing.sign(
        {
            "type": hub_designs.DESIGNS_TYPE,
            "shop_id": shop.shop_id,
            "key": shop.public_jwk(),
            "url": profile.url.rstrip("/"),
            "sequence": sequence,
            "issuedAt": issued,
            "expiresAt": expires,
            "designs": listed,
        },
        shop,
    )
    pushed = 0
    async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False, trust_env=False) as c:
        for hub in due:
            try:
                url = remote.check_url(hub) + hub_designs.PUSH_PATH
                resp = await c.post(
                    url, content=token, headers={"Content-Type": "application/jose"}
                )
            except (httpx.HTTPError, remote.RemoteError) as exc:
                log.info("design list not pushed to %s: %s", mask_url(hub), type(exc).__name__)
                continue
            if resp.status_code == 202:
                _last[hub] = (fingerprint, clock)
                pushed += 1
            else:  # 401 until the hub pinned our key from a report: tried again next tick
                log.info("design list refused by %s: HTTP %s", mask_url(hub), resp.status_code)
    return pushed


async def holders(*, settings: Settings, content_hash: str) -> dict[str, Any]:
    """Ask every configured hub which shops hold a design; merge by shop."""
    shops: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False, trust_env=False) as c:
        for hub in [h.rstrip("/") for h in settings.network_hubs]:
            try:
                url = f"{remote.check_url(hub)}{hub_designs.PUSH_PATH}/{content_hash}"
                await remote._check_host(url)
                resp = await c.get(url, headers={"Accept": "application/json"})
                body = resp.json() if resp.status_code == 200 else None
            except (httpx.HTTPError, ValueError, remote.RemoteError) as exc:
                problems.append(f"{mask_url(hub)}: {type(exc).__name__}")
                continue
            if not isinstance(body, dict):
                problems.append(f"{mask_url(hub)}: HTTP {resp.status_code}")
                continue
            for shop in body.get("shops") or []:
                if isinstance(shop, dict) and isinstance(shop.get("shop_id"), str):
                    entry = {k: shop.get(k) for k in ("shop_id", "name", "url", "title")}
                    shops.setdefault(shop["shop_id"], entry)
    return {"content_hash": content_hash, "shops": list(shops.values()), "problems": problems}
