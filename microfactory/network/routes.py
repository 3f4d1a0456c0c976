"""Network endpoints of the shop: its keys, its profile, its capacity report, push status."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from microfactory.accounts.models import Role
from microfactory.deps import AdminUser, Now, SessionDep, SettingsDep, current_user, oauth2_scheme
from microfactory.machines.schemas import mask_url
from microfactory.network import identity, report
from microfactory.network import service as network_service
from microfactory.network.schemas import (
    ProfileRead,
    ProfileUpdate,
    PushStatusList,
    PushStatusRead,
)

router = APIRouter(prefix="/api/v1/network", tags=["network"])
JOSE = "application/jose"
# A report whose content has not changed is served again for this long, rather than a new one
# with the next sequence number: anonymous readers of a public shop do not each write to the
# database, and the JSON and the JWS read within the window are the same report.
REUSE_S = 30.0


@dataclass(frozen=True)
class _Issued:
    """The last report this process issued, with its content digest and signature."""

    digest: str
    issued_at: dt.datetime
    report: dict[str, Any]
    jws: str


async def shop_key(request: Request) -> identity.ShopKey:
    """Return the shop's signing key (made on first start)."""
    settings = request.app.state.settings
    return await asyncio.to_thread(identity.shop_key, settings.data_dir)


ShopKeyDep = Annotated[identity.ShopKey, Depends(shop_key)]


async def capacity_reader(
    request: Request,
    session: SessionDep,
    bearer: Annotated[str | None, Depends(oauth2_scheme)],
) -> None:
    """Admit anyone when the shop publishes (MICROFACTORY_NETWORK_PUBLISH), else a login."""
    if request.app.state.settings.network_publish:
        return
    await current_user(request, session, bearer)


# Read by the route audit test: with publishing off, every role may read, after a login.
capacity_reader.allowed_roles = frozenset(Role)  # type: ignore[attr-defined]


def _profile_read(profile: network_service.Profile, shop: identity.ShopKey) -> ProfileRead:
    return ProfileRead(
        shop_id=shop.shop_id,
        name=profile.name,
        url=profile.url,
        city=profile.city,
        country=profile.country,
        lat=profile.lat,
        lon=profile.lon,
        round_to_city=profile.round_to_city,
        access_type=profile.access_type,
        contact=profile.contact,
        description=profile.description,
        updated_at=profile.updated_at,
    )


@router.get("/keys")
async def keys(shop: ShopKeyDep) -> dict[str, Any]:
    """Return this shop's public key as a JWKS (public): its kid is the shop's id."""
    return shop.jwks()


@router.get("/profile", response_model=ProfileRead, response_model_by_alias=True)
async def get_profile(
    session: SessionDep,
    settings: SettingsDep,
    shop: ShopKeyDep,
    _reader: Annotated[None, Depends(capacity_reader)],
) -> ProfileRead:
    """Show the shop's public profile (public when the shop publishes its report)."""
    profile = await network_service.get_profile(session=session, settings=settings)
    return _profile_read(profile, shop)


@router.put("/profile", response_model=ProfileRead, response_model_by_alias=True)
async def put_profile(
    body: ProfileUpdate,
    session: SessionDep,
    settings: SettingsDep,
    shop: ShopKeyDep,
    user: AdminUser,
) -> ProfileRead:
    """Replace the shop's public profile (admins)."""
    profile = await network_service.update_profile(
        session=session, settings=settings, profile_in=body
    )
    return _profile_read(profile, shop)


def _wants_jws(request: Request, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "jws"
    accept = request.headers.get("accept", "")
    return any(part.split(";")[0].strip() == JOSE for part in accept.split(","))


@router.get(
    "/capacity",
    responses={
        200: {
            "description": "The report (JSON), or with ?format=jws the compact JWS",
            "content": {JOSE: {"schema": {"type": "string"}}},
        }
    },
)
async def capacity(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    shop: ShopKeyDep,
    now: Now,
    _reader: Annotated[None, Depends(capacity_reader)],
    format: Annotated[str | None, Query(pattern="^(json|jws)$")] = None,
) -> Response:
    """Return this shop's capacity report: OKW facility and equipment, and live capacity.

    `?format=jws` or `Accept: application/jose` answers the compact JWS signed by the shop's
    key over the report's RFC 8785 canonical JSON. A new report takes the next sequence
    number; an unchanged one is served again for up to REUSE_S seconds.
    """
    body = await report.content(session=session, settings=settings, shop=shop, now=now)
    digest = report.fingerprint(body)
    cached: _Issued | None = getattr(request.app.state, "network_report", None)
    if (
        cached is not None
        and cached.digest == digest
        and cached.issued_at <= now < cached.issued_at + dt.timedelta(seconds=REUSE_S)
    ):
        issued = cached  # unchanged and recent: the same report, no new sequence number
    else:
        sequence = await report.next_sequence(session=session, now=now)
        built = report.finish(body, sequence=sequence, now=now, ttl_s=settings.network_report_ttl_s)
        issued = _Issued(digest, now, built, report.sign(built, shop))
        request.app.state.network_report = issued
    if _wants_jws(request, format):
        return Response(issued.jws, media_type=JOSE)
    return JSONResponse(issued.report)


@router.get("/push-status", response_model=PushStatusList)
async def push_status(
    session: SessionDep, settings: SettingsDep, user: AdminUser
) -> PushStatusList:
    """Show how pushing the report to each configured hub goes (admins)."""
    rows = await network_service.push_statuses(session=session, settings=settings)
    return PushStatusList(
        hubs=[
            PushStatusRead(
                hub_url=mask_url(r.hub_url),
                last_attempt_at=r.last_attempt_at,
                last_success_at=r.last_success_at,
                last_status=r.last_status,
                last_sequence=r.last_sequence,
                last_error=r.last_error,
                last_error_at=r.last_error_at,
                failures=r.failures or 0,
                next_attempt_at=r.next_attempt_at,
            )
            for r in rows
        ]
    )
