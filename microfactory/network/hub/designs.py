"""Hubs index public designs by content hash: "which shops hold this design?" is one query.

A shop pushes the list of its public designs, signed, as it pushes its capacity report
(`POST <hub>/api/v1/network/designs`, a compact JWS over the RFC 8785 form of):

    {"type": "microfactory.designs/1", "shop_id": <thumbprint>, "key": <public JWK>,
     "url": <base URL>, "sequence": n, "issuedAt": .., "expiresAt": ..,
     "designs": [{"hash": <sha256>, "title": .., "licence": <SPDX>}, ...]}

The hub takes it from a shop whose key it has pinned (approved) from its reports only, with
a sequence greater than the last list's (a replay is a 409), and replaces that shop's rows.
`GET /api/v1/network/designs/{hash}` answers the shops that hold a design, with their
name and URL from the hub's shop list: readable as the shop list is.

The list is separate from the capacity report (a contract between shops and hubs that has
no room for it), so a hub that does not know this endpoint ignores it (404) and a shop
without public designs pushes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any

from fastapi import APIRouter, Request, status
from pydantic import BaseModel
from sqlalchemy import BigInteger, Index, String, delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from microfactory.db import Base, UTCDateTime, utcnow
from microfactory.deps import Now, SessionDep
from microfactory.errors import (
    BadRequestError,
    ConflictError,
    InvalidInputError,
    NotAuthenticatedError,
)
from microfactory.network.hub.models import HubShop, PinStatus
from microfactory.network.hub.routes import Hub, Reader
from microfactory.network.requests import signing  # the same JWS form as requests

log = logging.getLogger("microfactory.network.hub")

DESIGNS_TYPE = "microfactory.designs/1"
PUSH_PATH = "/api/v1/network/designs"
MAX_DESIGNS = 2000
_HASH = re.compile(r"^[0-9a-f]{64}$")
JOSE_TYPES = ("application/jose", "text/plain")


class HubDesign(Base):
    """A public design a shop holds, as its latest signed list says."""

    __tablename__ = "hub_designs"
    __table_args__ = (Index("ix_hub_designs_content_hash", "content_hash"),)

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(200), default="")
    licence: Mapped[str] = mapped_column(String(100), default="")
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class HubDesignList(Base):
    """The last design list taken from a shop (its sequence refuses replays)."""

    __tablename__ = "hub_design_lists"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DesignsTaken(BaseModel):
    """What the hub did with a pushed design list."""

    shop_id: str
    sequence: int
    designs: int


class Holder(BaseModel):
    """A shop that holds a design."""

    shop_id: str
    name: str
    url: str
    title: str
    licence: str
    updated_at: dt.datetime


class Holders(BaseModel):
    """The shops that hold a design, most recently listed first."""

    content_hash: str
    shops: list[Holder]


def _entries(value: Any) -> list[tuple[str, str, str]]:
    if not isinstance(value, list) or len(value) > MAX_DESIGNS:
        raise BadRequestError(f'"designs" must be a list of at most {MAX_DESIGNS} designs')
    out: dict[str, tuple[str, str, str]] = {}
    for item in value:
        if not isinstance(item, dict) or not _HASH.fullmatch(str(item.get("hash", ""))):
            raise BadRequestError('each design needs a "hash": a SHA-256 content hash (64 hex)')
        out[str(item["hash"])] = (
            str(item["hash"]),
            str(item.get("title") or "")[:200],
            str(item.get("licence") or "")[:100],
        )
    return list(out.values())


async def ingest(*, session: AsyncSession, token: bytes, now: dt.datetime) -> DesignsTaken:
    """Check a shop's signed design list and make it the shop's holdings here."""
    got = signing.verify(token, kind=DESIGNS_TYPE, to=None)
    signing.check_times(got, now=now)
    shop = await session.get(HubShop, got.shop_id, with_for_update=True)
    if shop is None or shop.status != PinStatus.APPROVED:
        raise NotAuthenticatedError(
            "this hub has not pinned the shop's key: push a capacity report first (and, on a "
            "closed hub, wait for an admin's approval)"
        )
    if shop.public_jwk.get("x") != got.public_jwk.get("x"):
        raise NotAuthenticatedError("the list is not signed with the shop's pinned key")
    entries = _entries(got.payload.get("designs"))
    last = await session.get(HubDesignList, got.shop_id)
    if last is not None and got.sequence <= last.sequence:
        raise ConflictError(f"list sequence {got.sequence} is not after {last.sequence} (a replay)")
    if last is None:
        session.add(HubDesignList(shop_id=got.shop_id, sequence=got.sequence, received_at=now))
    else:
        last.sequence, last.received_at = got.sequence, now
    await session.execute(delete(HubDesign).where(HubDesign.shop_id == got.shop_id))
    session.add_all(
        HubDesign(shop_id=got.shop_id, content_hash=h, title=t, licence=lic, updated_at=now)
        for h, t, lic in entries
    )
    await session.flush()
    log.info("design list %s from shop %s: %s designs", got.sequence, got.shop_id, len(entries))
    return DesignsTaken(shop_id=got.shop_id, sequence=got.sequence, designs=len(entries))


async def holders(*, session: AsyncSession, content_hash: str) -> list[Holder]:
    """Return the shops whose latest list holds the design (approved shops only)."""
    rows = (
        await session.execute(
            select(HubDesign, HubShop)
            .join(HubShop, HubShop.shop_id == HubDesign.shop_id)
            .where(HubDesign.content_hash == content_hash, HubShop.status == PinStatus.APPROVED)
            .order_by(HubDesign.updated_at.desc())
        )
    ).all()
    return [
        Holder(
            shop_id=d.shop_id,
            name=s.name,
            url=s.url,
            title=d.title,
            licence=d.licence,
            updated_at=d.updated_at,
        )
        for d, s in rows
    ]


router = APIRouter(prefix="/api/v1/network", tags=["network hub"])


@router.post(
    "/designs",
    response_model=DesignsTaken,
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "the compact JWS; send it with Content-Type: application/jose",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def push_designs(request: Request, session: SessionDep, now: Now, _hub: Hub) -> DesignsTaken:
    """Take a shop's signed list of public designs (no login: the pinned key is the check).

    Refused: not a JWS 400, a key the hub has not pinned 401, a replay 409, expired 422.
    """
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in JOSE_TYPES:
        raise BadRequestError(
            "send the compact JWS as the body, with Content-Type: application/jose"
        )
    return await ingest(session=session, token=await request.body(), now=now)


@router.get("/designs/{content_hash}", response_model=Holders)
async def design_holders(content_hash: str, session: SessionDep, _reader: Reader) -> Holders:
    """Which shops hold a design, by content hash (readable as the shop list is)."""
    content_hash = content_hash.lower()
    if not _HASH.fullmatch(content_hash):
        raise InvalidInputError("a content hash is a SHA-256: 64 hex characters")
    return Holders(
        content_hash=content_hash, shops=await holders(session=session, content_hash=content_hash)
    )
