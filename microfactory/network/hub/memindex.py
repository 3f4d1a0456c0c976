"""The routing index in memory: a grid of lat/lon cells per hub process, kept current.

Routing reads the rows of `hub_offers` and `hub_shop_index` near a point. In the database
that is a spatial query and a few more round trips per answer (~15-70 ms at 100,000 shops
on a loaded machine); here it is a walk over the cells around the point, in the process.

How it stays consistent with the database, with several hub workers and processes:
- Every transaction that changes the index rows (ingest, mirroring, approval, revocation,
  pruning) bumps `hub_index_version` as its last statement and logs the shops it changed in
  `hub_index_log` under that version (`index.bump`). The bump updates one row, so those
  transactions are serialised from their bump to their commit and versions become visible
  in order: a reader that sees version N has seen every change up to N.
- Each query reads the version (one primary-key lookup). The same: the copy is current.
  Higher: the copy reloads, from the database, the shops logged since its version (a
  dropped shop is simply not found and leaves the copy). The first query of a process, or
  a copy older than the log's floor (log rows are pruned with the reports), or a version
  lower than the copy's (a database reset), loads everything.
- So an answer reflects every change committed before the query began, as the SQL path
  does; a copy never writes.
The copy is built lazily by the first routing query of a process (100,000 shops: 9 s on
the loaded 2-core development machine), one load at a time per process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.network.hub.models import HubIndexLog, HubIndexVersion, HubOffer, HubShopIndex

CELL_DEG = 0.5  # a cell is 0.5° × 0.5°: ~25 shops each at 100,000 shops over Europe
EARTH_KM = 6371.0088  # as routing's haversine
KM_PER_DEG_LAT = math.pi * EARTH_KM / 180.0
LOAD_PART = 5000  # offer rows fetched at a time on a full load
RELOAD_IN = 500  # shops per IN (...) when reloading changed shops
LON_CELLS = range(math.floor(-180 / CELL_DEG), math.floor(180 / CELL_DEG) + 1)

_Cell = tuple[int, int]
# The columns of hub_offers routing reads; an Offer adds what it derives from them.
SHARED = frozenset(
    ("expires_at", "free_from", "machine", "material", "process", "shop_id", "shop_name",
     "timezone")
)  # fmt: skip
COLUMNS = (
    "dim_a", "dim_b", "dim_c", "expires_at", "free_from", "free_hours", "id", "laser_w", "lat",
    "lon", "machine", "material", "nozzle_mm", "on_hand", "process", "quantity", "shop_id",
    "shop_name", "timezone", "wait_h",
)  # fmt: skip


class Offer:
    """An offer row as routing reads it (the columns of `hub_offers`)."""

    __slots__ = (
        "cos_p2",
        "dim_a",
        "dim_b",
        "dim_c",
        "expires_at",
        "free_from",
        "free_hours",
        "hours",
        "id",
        "laser_w",
        "lat",
        "lon",
        "machine",
        "material",
        "nozzle_mm",
        "on_hand",
        "p2",
        "process",
        "quantity",
        "shop_id",
        "shop_name",
        "timezone",
        "wait_h",
    )

    dim_a: float
    dim_b: float
    dim_c: float
    expires_at: dt.datetime
    free_from: str
    free_hours: str
    hours: tuple[float, ...]  # free_hours parsed
    id: int
    laser_w: float | None
    lat: float
    lon: float
    machine: str
    material: str
    nozzle_mm: float | None
    on_hand: bool | None
    p2: float  # radians(lat)
    cos_p2: float  # cos(p2)
    process: str
    quantity: int
    shop_id: str
    shop_name: str
    timezone: str
    wait_h: float

    def __init__(self, row: Any, shared: dict[Any, Any]) -> None:
        for name in COLUMNS:
            value = getattr(row, name)
            if name in SHARED:  # the same few values in many rows: kept once
                value = shared.setdefault(value, value)
            setattr(self, name, value)
        self.hours = tuple(float(t) for t in self.free_hours.split(",")) if self.free_hours else ()
        self.p2 = math.radians(self.lat)
        self.cos_p2 = math.cos(self.p2)


class Shop:
    """A shop row as routing reads it: where it is, its name, when its report expires."""

    __slots__ = ("cos_p2", "expires_at", "lat", "lon", "name", "p2", "shop_id")

    def __init__(self, row: Any) -> None:
        self.shop_id: str = row.shop_id
        self.name: str = row.name
        self.lat: float = row.lat
        self.lon: float = row.lon
        self.expires_at: dt.datetime = row.expires_at
        self.p2 = math.radians(self.lat)
        self.cos_p2 = math.cos(self.p2)


def cell(lat: float, lon: float) -> _Cell:
    """Return the grid cell of a point."""
    return math.floor(lat / CELL_DEG), math.floor(lon / CELL_DEG)


def cells_near(lat: float, lon: float, radius_km: float) -> list[_Cell]:
    """Return the cells that hold every point within radius_km (a superset, like the box)."""
    dlat = radius_km / KM_PER_DEG_LAT * 1.001
    lat_lo, lat_hi = max(lat - dlat, -90.0), min(lat + dlat, 90.0)
    rows = range(math.floor(lat_lo / CELL_DEG), math.floor(lat_hi / CELL_DEG) + 1)
    widest = max(abs(lat_lo), abs(lat_hi))
    if widest >= 89.9:
        return [(r, c) for r in rows for c in LON_CELLS]
    dlon = dlat / math.cos(math.radians(widest))
    if dlon >= 180:
        return [(r, c) for r in rows for c in LON_CELLS]
    spans = [(lon - dlon, lon + dlon)]
    if lon - dlon < -180:
        spans = [(lon - dlon + 360, 180.0), (-180.0, lon + dlon)]
    elif lon + dlon > 180:
        spans = [(lon - dlon, 180.0), (-180.0, lon + dlon - 360)]
    cols: set[int] = set()
    for lo, hi in spans:
        cols.update(range(math.floor(lo / CELL_DEG), math.floor(hi / CELL_DEG) + 1))
    return [(r, c) for r in rows for c in sorted(cols)]


def cell_lower_bound_km(lat: float, lon: float, c: _Cell) -> float:
    """Return a lower bound of the great-circle distance from the point to any point of c.

    The haversine h = sin²(Δφ/2) + cos φ1 cos φ2 sin²(Δλ/2) is bounded below term by term:
    the smallest latitude and longitude differences to the cell, and the smallest cos φ2
    in it. Shrunk by a part in a million against rounding.
    """
    lat_lo, lon_lo = c[0] * CELL_DEG, c[1] * CELL_DEG
    lat_hi, lon_hi = lat_lo + CELL_DEG, lon_lo + CELL_DEG
    dphi = max(lat_lo - lat, lat - lat_hi, 0.0)
    if lon_lo <= lon <= lon_hi:
        dlam = 0.0
    else:
        dlam = min(abs(lon - lon_lo), abs(lon - lon_hi))
        dlam = min(dlam, 360.0 - abs(lon - lon_lo), 360.0 - abs(lon - lon_hi))
    cos_min = max(math.cos(math.radians(min(max(abs(lat_lo), abs(lat_hi)), 90.0))), 0.0)
    h = (
        math.sin(math.radians(dphi) / 2) ** 2
        + math.cos(math.radians(lat)) * cos_min * math.sin(math.radians(min(dlam, 180.0)) / 2) ** 2
    )
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(h))) * (1 - 1e-6)


class MemIndex:
    """One process's copy of the routing index (see the module)."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.lock = asyncio.Lock()
        # (process, material) -> cell -> offers
        self.offers: dict[tuple[str, str], dict[_Cell, list[Offer]]] = {}
        self.shop_cells: dict[_Cell, list[Shop]] = {}
        self.shops: dict[str, Shop] = {}
        self.by_shop: dict[str, list[Offer]] = {}  # in id order, as the database has them
        self.loads = 0  # full loads, for tests and the bench

    # -- reading -----------------------------------------------------------------------

    def offers_near(
        self, process: str, material: str, lat: float, lon: float, radius_km: float
    ) -> Iterator[Offer]:
        """Yield the offers of (process, material) in the cells around the point."""
        grid = self.offers.get((process, material))
        if not grid:
            return
        for c in cells_near(lat, lon, radius_km):
            found = grid.get(c)
            if found and cell_lower_bound_km(lat, lon, c) <= radius_km:
                yield from found

    def shops_near(self, lat: float, lon: float, radius_km: float) -> Iterator[Shop]:
        """Yield the shops in the cells around the point."""
        for c in cells_near(lat, lon, radius_km):
            found = self.shop_cells.get(c)
            if found:
                yield from found

    def shop_cells_nearest_first(
        self, lat: float, lon: float, radius_km: float
    ) -> list[tuple[float, list[Shop]]]:
        """Return the shops of the cells around the point by cell, with a lower bound (km)
        of the distance to any point of the cell, the nearest cell first."""
        found = []
        for c in cells_near(lat, lon, radius_km):
            shops = self.shop_cells.get(c)
            if shops:
                bound = cell_lower_bound_km(lat, lon, c)
                if bound <= radius_km:
                    found.append((bound, shops))
        found.sort(key=lambda x: x[0])
        return found

    def offers_of(self, shop_id: str) -> list[Offer]:
        """Return a shop's offers (in the database's id order)."""
        return self.by_shop.get(shop_id, [])

    # -- keeping current ---------------------------------------------------------------

    def _remove(self, shop_id: str) -> None:
        shop = self.shops.pop(shop_id, None)
        if shop is not None:
            found = self.shop_cells.get(cell(shop.lat, shop.lon))
            if found is not None:
                found[:] = [s for s in found if s.shop_id != shop_id]
        for offer in self.by_shop.pop(shop_id, []):
            grid = self.offers.get((offer.process, offer.material))
            at = grid.get(cell(offer.lat, offer.lon)) if grid is not None else None
            if at is not None:
                at[:] = [o for o in at if o is not offer]

    def _add(
        self, shops: Iterable[Any], offers: Iterable[Any], shared: dict[Any, Any] | None = None
    ) -> None:
        shared = {} if shared is None else shared
        for row in shops:
            shop = Shop(row)
            self.shops[shop.shop_id] = shop
            shared.setdefault(shop.shop_id, shop.shop_id)
            self.shop_cells.setdefault(cell(shop.lat, shop.lon), []).append(shop)
        for row in offers:
            offer = Offer(row, shared)
            self.by_shop.setdefault(offer.shop_id, []).append(offer)
            grid = self.offers.setdefault((offer.process, offer.material), {})
            grid.setdefault(cell(offer.lat, offer.lon), []).append(offer)

    async def _load_all(self, session: AsyncSession, version: int) -> None:
        self.offers, self.shop_cells, self.shops, self.by_shop = {}, {}, {}, {}
        shared: dict[Any, Any] = {}
        self._add((await session.execute(_SHOP_COLUMNS)).all(), (), shared)
        # In partitions, not all rows at once: the copy's peak memory is the copy's.
        offers = await session.stream(_OFFER_COLUMNS.order_by(HubOffer.id))
        async for part in offers.partitions(LOAD_PART):
            self._add((), part, shared)
        self.version = version
        self.loads += 1

    async def _reload(self, session: AsyncSession, shop_ids: list[str], version: int) -> None:
        for start in range(0, len(shop_ids), RELOAD_IN):
            some = shop_ids[start : start + RELOAD_IN]
            shops = (
                await session.execute(_SHOP_COLUMNS.where(HubShopIndex.shop_id.in_(some)))
            ).all()
            offers = (
                await session.execute(
                    _OFFER_COLUMNS.where(HubOffer.shop_id.in_(some)).order_by(HubOffer.id)
                )
            ).all()
            for shop_id in some:
                self._remove(shop_id)
            self._add(shops, offers)
        self.version = version

    async def sync(self, session: AsyncSession) -> None:
        """Bring the copy up to the database's version (see the module)."""
        found = (
            await session.execute(
                select(HubIndexVersion.version, HubIndexVersion.log_floor).where(
                    HubIndexVersion.id == 1
                )
            )
        ).first()
        version, floor = (found[0], found[1]) if found else (0, 0)
        if self.version == version:
            return
        async with self.lock:
            if self.version == version:  # another query of this process did it
                return
            if self.version is None or self.version < floor or version < self.version:
                await self._load_all(session, version)
                return
            changed = (
                await session.execute(
                    select(HubIndexLog.shop_id)
                    .where(HubIndexLog.version > self.version, HubIndexLog.version <= version)
                    .distinct()
                )
            ).scalars()
            await self._reload(session, sorted(changed), version)


_SHOP_COLUMNS = select(
    HubShopIndex.shop_id,
    HubShopIndex.name,
    HubShopIndex.lat,
    HubShopIndex.lon,
    HubShopIndex.expires_at,
)
_OFFER_COLUMNS = select(*(getattr(HubOffer, name) for name in COLUMNS))

_copies: weakref.WeakKeyDictionary[Any, MemIndex] = weakref.WeakKeyDictionary()


async def current(session: AsyncSession) -> MemIndex:
    """Return this process's copy of the index for the session's database, brought current."""
    engine = session.get_bind()
    copy = _copies.get(engine)
    if copy is None:
        copy = _copies[engine] = MemIndex()
    await copy.sync(session)
    return copy
