"""Hub endpoints: take signed reports, serve them to other hubs, list shops, route jobs.

Pushing a report needs no login: its signature, checked against the shop's pinned key, is
the credential. Reading (stored reports, shops, routing) is public when the hub publishes
(`MICROFACTORY_NETWORK_PUBLISH=true`), otherwise it needs a login. Pins are admins' business.
Every path answers 404 unless `MICROFACTORY_HUB=true`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status
from sqlalchemy import select

from microfactory.deps import AdminUser, Now, SessionDep, current_user, oauth2_scheme
from microfactory.errors import BadRequestError, DomainError, NotFoundError
from microfactory.network.hub import batch, requirements, routing, service
from microfactory.network.hub.models import HubShop, HubUpstream, PinStatus
from microfactory.network.hub.schemas import (
    PinRead,
    ReportAccepted,
    ReportPage,
    RouteAnswer,
    RouteRequest,
    ShopList,
    ShopListed,
    StoredReport,
    UpstreamRead,
)
from microfactory.types import ID_MAX

router = APIRouter(prefix="/api/v1/network", tags=["network hub"])
JOSE_TYPES = ("application/jose", "text/plain")


def require_hub(request: Request) -> None:
    """Answer 404 unless this instance is a hub."""
    if not request.app.state.settings.hub:
        raise NotFoundError("this server is not a hub (MICROFACTORY_HUB=true makes it one)")


async def network_reader(
    request: Request,
    session: SessionDep,
    bearer: Annotated[str | None, Depends(oauth2_scheme)],
) -> None:
    """Admit anyone when the hub publishes, else any logged-in user."""
    require_hub(request)
    if not request.app.state.settings.network_publish:
        await current_user(request, session, bearer)


Reader = Annotated[None, Depends(network_reader)]
Hub = Annotated[None, Depends(require_hub)]


@router.post(
    "/reports",
    response_model=ReportAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    # Documented as text/plain, which the route takes too: OpenAPI tools (schemathesis in
    # tests/fuzz) have no serialiser for application/jose, the contract's media type.
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "the compact JWS; send it with Content-Type: application/jose",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def push_report(request: Request, now: Now, _hub: Hub) -> ReportAccepted:
    """Take a shop's signed capacity report, a compact JWS (public: the signature is the key)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in JOSE_TYPES:
        raise BadRequestError(
            "send the compact JWS as the body, with Content-Type: application/jose"
        )
    body = await request.body()
    settings = request.app.state.settings
    # Form and signature first, without the database (400, 401).
    item = service.check(body, settings=settings, now=now)
    if settings.hub_ingest_batch:  # stored with the pushes that arrive meanwhile (batch.py)
        result = await batch.batcher(request.app).submit(item)
    else:
        async with request.app.state.sessionmaker() as session, session.begin():
            (outcome,) = await service.store_checked(session=session, items=[item])
        if isinstance(outcome, DomainError):
            raise outcome
        result = outcome
    return ReportAccepted(shop_id=result.shop_id, sequence=result.sequence, status=result.status)


@router.get("/reports", response_model=ReportPage)
async def stored_reports(
    session: SessionDep,
    _reader: Reader,
    since: Annotated[int | None, Query(ge=0, le=ID_MAX, description="a cursor from `next`")] = None,
    limit: Annotated[int, Query(ge=1, le=service.PAGE_SIZE)] = service.PAGE_SIZE,
) -> ReportPage:
    """Serve stored reports exactly as received, from a cursor on (for mirroring hubs)."""
    rows, nxt = await service.reports_since(session=session, since=since, limit=limit)
    return ReportPage(
        reports=[
            StoredReport(cursor=r.cursor, shop_id=r.shop_id, jws=r.jws, received_at=r.received_at)
            for r in rows
        ],
        next=nxt,
    )


@router.get("/shops", response_model=ShopList)
async def shops(session: SessionDep, now: Now, _reader: Reader, live: bool = False) -> ShopList:
    """List the shops the hub knows: live first by name, expired last (or left out: live=true)."""
    rows = await service.list_shops(session=session, now=now, live_only=live)
    return ShopList(shops=[ShopListed.model_validate(service.shop_view(r, now)) for r in rows])


@router.post("/route", response_model=RouteAnswer)
async def route(body: RouteRequest, session: SessionDep, now: Now, _reader: Reader) -> RouteAnswer:
    """Rank the shops near a point that can make the job soonest, with the reasons."""
    req = await requirements.resolve(session=session, request=body)
    return await routing.route(session=session, req=req, now=now)


# -- admins: pins and mirroring ------------------------------------------------------


def pin_read(shop: HubShop) -> PinRead:
    """Return a pin as the admin API shows it."""
    return PinRead(
        shop_id=shop.shop_id,
        name=shop.name,
        url=shop.url,
        status=shop.status.value,
        public_jwk=shop.public_jwk,
        last_sequence=shop.last_sequence,
        first_seen_at=shop.first_seen_at,
        decided_at=shop.decided_at,
        decided_by=shop.decided_by,
        waiting_report=bool(shop.pending_jws),
    )


@router.get("/hub/pins", response_model=list[PinRead])
async def pins(
    session: SessionDep, _admin: AdminUser, _hub: Hub, status: PinStatus | None = None
) -> list[PinRead]:
    """List the shops this hub has seen and their keys, pending first (admin)."""
    return [pin_read(s) for s in await service.list_pins(session=session, status=status)]


@router.post("/hub/pins/{shop_id}/approve", response_model=PinRead)
async def approve(
    shop_id: str, request: Request, session: SessionDep, now: Now, admin: AdminUser, _hub: Hub
) -> PinRead:
    """Pin a shop's key and take its waiting report (admin)."""
    shop = await service.approve(
        session=session,
        shop_id=shop_id,
        admin=admin.username,
        settings=request.app.state.settings,
        now=now,
    )
    return pin_read(shop)


@router.post("/hub/pins/{shop_id}/revoke", response_model=PinRead)
async def revoke(
    shop_id: str, session: SessionDep, now: Now, admin: AdminUser, _hub: Hub
) -> PinRead:
    """Refuse a shop's reports from now on and drop it from routing (admin)."""
    return pin_read(
        await service.revoke(session=session, shop_id=shop_id, admin=admin.username, now=now)
    )


@router.get("/hub/upstreams", response_model=list[UpstreamRead])
async def upstreams(session: SessionDep, _admin: AdminUser, _hub: Hub) -> list[UpstreamRead]:
    """Show how mirroring each upstream hub goes (admin)."""
    rows = (await session.execute(select(HubUpstream).order_by(HubUpstream.url))).scalars()
    return [UpstreamRead.model_validate(r, from_attributes=True) for r in rows]
