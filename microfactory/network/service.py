"""The shop's public profile and the push status per hub."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.config import Settings
from microfactory.db import utcnow
from microfactory.network.models import PushStatus, ShopProfile
from microfactory.network.schemas import ProfileUpdate


@dataclass(frozen=True)
class Profile:
    """The profile in force: the stored one, or defaults from the settings."""

    name: str
    url: str
    city: str
    country: str
    lat: float | None
    lon: float | None
    round_to_city: bool
    access_type: str
    contact: str
    description: str
    updated_at: dt.datetime | None


def default_url(settings: Settings) -> str:
    """Return the URL the server listens on, for a shop that has not set its public URL."""
    return f"http://{settings.host}:{settings.port}"


async def get_profile(*, session: AsyncSession, settings: Settings) -> Profile:
    """Return the shop's profile (defaults until an admin saves one)."""
    row = await session.get(ShopProfile, 1)
    if row is None:
        return Profile(
            name=settings.shop_name,
            url=default_url(settings),
            city="",
            country="",
            lat=None,
            lon=None,
            round_to_city=False,
            access_type="Restricted",
            contact="",
            description="",
            updated_at=None,
        )
    return Profile(
        name=row.name,
        url=row.url or default_url(settings),
        city=row.city,
        country=row.country,
        lat=row.lat,
        lon=row.lon,
        round_to_city=row.round_to_city,
        access_type=row.access_type,
        contact=row.contact,
        description=row.description,
        updated_at=row.updated_at,
    )


async def update_profile(
    *, session: AsyncSession, settings: Settings, profile_in: ProfileUpdate
) -> Profile:
    """Replace the shop's profile."""
    row = await session.get(ShopProfile, 1)
    if row is None:
        row = ShopProfile(id=1)
        session.add(row)
    row.name = profile_in.name
    row.url = str(profile_in.url).rstrip("/") if profile_in.url else ""
    row.city = profile_in.city
    row.country = profile_in.country
    row.lat = profile_in.lat
    row.lon = profile_in.lon
    row.round_to_city = profile_in.round_to_city
    row.access_type = profile_in.access_type
    row.contact = profile_in.contact
    row.description = profile_in.description
    row.updated_at = utcnow()
    await session.flush()
    return await get_profile(session=session, settings=settings)


async def push_statuses(*, session: AsyncSession, settings: Settings) -> list[PushStatus]:
    """Return the push status of every configured hub (a hub never tried has an empty one)."""
    rows = {
        r.hub_url: r
        for r in (
            await session.execute(
                select(PushStatus).where(PushStatus.hub_url.in_(settings.network_hubs))
            )
        ).scalars()
    }
    return [rows.get(url) or PushStatus(hub_url=url, failures=0) for url in settings.network_hubs]
