"""Route a job to the shops that can make it soonest near a point, with the reasons.

Two queries and a small ranking in Python:

1. The offers (one row per shop, machine model and material) near the point that work the
   material, whose work volume holds the part in some orientation, from reports not expired.
   "Near" is a spatial prefilter: on PostgreSQL `earth_box(ll_to_earth(...), r) @>
   ll_to_earth(lat, lon)` on a GiST index (cube + earthdistance); on SQLite a bounding box on
   the indexed lat/lon columns. The exact distance is then the haversine in Python, the same
   on both backends.
2. For each fitting shop: the best-fitting machine (the shortest estimated job, then the
   smallest work volume), the earliest start (its queue wait for the process, then the first
   day with free hours for that material) and finish (when the job's estimate, see
   `estimate`, fits into the free hours reported day by day). Shops whose finish misses the
   deadline, or without enough free hours in the week reported, are excluded with that
   reason.
3. `excluded` lists the other shops within the radius, nearest first (up to EXCLUDED_LIMIT),
   each with the first reason it does not fit: report expired, no machine for the process,
   none that works the material, none large enough, the material not on hand. When fewer than
   FEW_FITTING shops fit, the nearest fitting shops beyond the radius are listed too, as
   "too far".
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Select, and_, bindparam, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.network.hub import estimate, memindex
from microfactory.network.hub.models import HubOffer, HubShopIndex
from microfactory.network.hub.requirements import Requirements
from microfactory.network.hub.schemas import ExcludedShop, RouteAnswer, RoutedShop

EARTH_KM = 6371.0088  # mean radius (IUGG), used for every distance we report
# earthdistance's earth() is 6378.168 km: its boxes are scaled by this so they stay a superset.
PG_EARTH_KM = 6378.168
KM_PER_DEG_LAT = math.pi * EARTH_KM / 180.0
EXCLUDED_LIMIT = 20
MAX_JOB_H = 366 * 24.0
SHOPS_LIMIT = 25  # the answer lists the best 25: enough to choose from, cheap to send
KNN_PAGE = 50
KNN_PAGES = 6
FEW_FITTING = 3
TOO_FAR_LIMIT = 5
TOO_FAR_FACTOR = 3.0  # "too far" looks this many radii out
PROCESS_NAMES = {
    "fdm_printing": "3D printer",
    "cnc_milling": "CNC mill",
    "laser_cutting": "laser cutter",
}


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Return the great-circle distance in km."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(h)))


def _distance_to(lat: float, lon: float, p1: float, cos_p1: float, row: Any) -> float:
    """haversine_km(lat, lon, row.lat, row.lon), the same operations on the same floats,
    with the row's radians and cosine computed once (the in-memory index keeps them)."""
    p2 = row.p2
    dp, dl = p2 - p1, math.radians(row.lon - lon)
    h = math.sin(dp / 2) ** 2 + cos_p1 * row.cos_p2 * math.sin(dl / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(h)))


def _fit_dims(process: str, size: tuple[float, float, float]) -> tuple[float, float, float]:
    a, b, c = sorted(size, reverse=True)
    # A laser's work area is flat (z 0): the sheet's outline must fit, its thickness is not
    # a travel of the machine.
    return (a, b, 0.0) if process == "laser_cutting" else (a, b, c)


def _near(model: Any, dialect: str, lat: float, lon: float, radius_km: float) -> Any:
    """Return a prefilter that keeps every row within radius_km of the point (a superset)."""
    if dialect == "postgresql":
        metres = radius_km * 1000.0 * PG_EARTH_KM / EARTH_KM * 1.001
        centre = func.ll_to_earth(bindparam("c_lat", lat), bindparam("c_lon", lon))
        return func.earth_box(centre, metres).op("@>")(func.ll_to_earth(model.lat, model.lon))
    dlat = radius_km / KM_PER_DEG_LAT
    lat_lo, lat_hi = lat - dlat, lat + dlat
    if lat_lo <= -90 or lat_hi >= 90:
        return model.lat.between(max(lat_lo, -90), min(lat_hi, 90))  # around a pole: any lon
    dlon = dlat / math.cos(math.radians(max(abs(lat_lo), abs(lat_hi))))
    if dlon >= 180:
        return model.lat.between(lat_lo, lat_hi)
    lon_lo, lon_hi = lon - dlon, lon + dlon
    box = model.lat.between(lat_lo, lat_hi)
    if lon_lo < -180:
        return and_(box, or_(model.lon >= lon_lo + 360, model.lon <= lon_hi))
    if lon_hi > 180:
        return and_(box, or_(model.lon >= lon_lo, model.lon <= lon_hi - 360))
    return and_(box, model.lon.between(lon_lo, lon_hi))


def _offers_query(req: Requirements, now: dt.datetime) -> Select[Any]:
    fits = []
    for process in req.processes:
        a, b, c = _fit_dims(process, req.size)
        fits.append(
            and_(
                HubOffer.process == process,
                HubOffer.dim_a >= a,
                HubOffer.dim_b >= b,
                HubOffer.dim_c >= c,
            )
        )
    stmt: Select[Any] = select(  # type: ignore[assignment]  # a 17-column row type
        HubOffer.shop_id,
        HubOffer.shop_name,
        HubOffer.process,
        HubOffer.machine,
        HubOffer.quantity,
        HubOffer.dim_a,
        HubOffer.dim_b,
        HubOffer.dim_c,
        HubOffer.nozzle_mm,
        HubOffer.laser_w,
        HubOffer.lat,
        HubOffer.lon,
        HubOffer.wait_h,
        HubOffer.on_hand,
        HubOffer.free_from,
        HubOffer.free_hours,
        HubOffer.timezone,
    ).where(
        HubOffer.material == req.material.strip().lower(),
        HubOffer.expires_at > now,
        or_(*fits),
    )
    return stmt


@dataclass
class _Plan:
    shop_id: str
    name: str
    distance_km: float
    machine: str
    dims: tuple[float, float, float]
    job_h: float
    wait_h: float
    start: dt.datetime | None
    finish: dt.datetime | None
    first_free: dt.date | None


def _zone(name: str) -> dt.tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return dt.UTC


_Bounds = list[tuple[dt.date, dt.datetime, dt.datetime]]


def _day_bounds(free_from: str, timezone: str, cache: dict[tuple[str, str], _Bounds]) -> _Bounds:
    """Return each reported day with its start and end in UTC (cached per route call)."""
    key = (free_from, timezone)
    found = cache.get(key)
    if found is None:
        tz = _zone(timezone)
        first = dt.date.fromisoformat(free_from)
        days = [first + dt.timedelta(days=i) for i in range(8)]
        edges = [dt.datetime.combine(d, dt.time(), tzinfo=tz).astimezone(dt.UTC) for d in days]
        found = [(days[i], edges[i], edges[i + 1]) for i in range(7)]
        cache[key] = found
    return found


def earliest_start(
    *,
    now: dt.datetime,
    wait_h: float,
    free_from: str,
    free_hours: str,
    timezone: str,
    job_h: float = 0.0,
    cache: dict[tuple[str, str], _Bounds] | None = None,
    hours: Sequence[float] | None = None,
) -> tuple[dt.datetime, dt.date, dt.datetime] | None:
    """Return the earliest start, its day and the finish: after the queue wait, in free hours.

    The report gives free machine-hours per day, not their times of day, so the job is laid
    into each day's free hours from that day's beginning in the shop's time zone (today: from
    now plus the wait); what does not fit in one day's free hours goes on into the next day
    with free hours. None: after the wait, the week reported has not enough free hours for
    the job (a week of bookings leaves a few minutes here and there, not a 3-hour print).
    `hours` are `free_hours` parsed already (the in-memory index keeps them so).
    """
    if not free_from or not free_hours:
        return None
    if hours is None:
        hours = [float(text) for text in free_hours.split(",")]
    ready = now + dt.timedelta(hours=wait_h)
    bounds = _day_bounds(free_from, timezone, {} if cache is None else cache)
    remaining = max(job_h, 0.0)
    first: tuple[dt.datetime, dt.date] | None = None
    for (day, day_start, day_end), free in zip(bounds, hours, strict=False):
        if day_end <= ready or free <= 0:
            continue
        begin = max(ready, day_start)
        if first is None:
            first = (begin, day)
        if remaining <= free:
            return first[0], first[1], begin + dt.timedelta(hours=remaining)
        remaining -= free
    return None


def _plan(
    row: Any,
    req: Requirements,
    now: dt.datetime,
    distance: float,
    caches: tuple[dict[Any, float], dict[tuple[str, str], _Bounds]],
) -> _Plan:
    estimates, bounds = caches
    key = (row.process, row.quantity, row.nozzle_mm, row.laser_w)
    job_h = estimates.get(key)
    if job_h is None:
        job_h = estimates[key] = estimate.job_hours(
            row.process,
            req.size,
            req.quantity,
            machines=row.quantity,
            nozzle_mm=row.nozzle_mm,
            laser_w=row.laser_w,
        )
    found = earliest_start(
        now=now,
        wait_h=row.wait_h,
        free_from=row.free_from,
        free_hours=row.free_hours,
        timezone=row.timezone,
        job_h=job_h,
        cache=bounds,
        hours=getattr(row, "hours", None),
    )
    start, day, finish = found if found else (None, None, None)
    return _Plan(
        shop_id=row.shop_id,
        name=row.shop_name,
        distance_km=distance,
        machine=row.machine,
        dims=(row.dim_a, row.dim_b, row.dim_c),
        job_h=job_h,
        wait_h=row.wait_h,
        start=start,
        # A job over a year is not planned (and its finish could overflow a datetime).
        finish=finish if job_h <= MAX_JOB_H else None,
        first_free=day,
    )


def _dims_text(dims: Iterable[float]) -> str:
    # A laser's work area is flat: "600×400", not "600×400×0".
    return "×".join(f"{d:g}" for d in dims if d > 0) or "0"


def _hours(h: float) -> str:
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h"


def _fit_reason(plan: _Plan, req: Requirements) -> str:
    parts = [
        f"{plan.machine} ({_dims_text(plan.dims)} mm) works {req.material}",
        f"queue wait {_hours(plan.wait_h)}",
    ]
    if plan.first_free is not None:
        parts.append(f"free hours from {plan.first_free.isoformat()}")
    parts.append(f"job ≈ {_hours(plan.job_h)} for {req.quantity}")
    parts.append(f"{plan.distance_km:.1f} km away")
    return "; ".join(parts)


def _mem_offers(
    mem: memindex.MemIndex, req: Requirements, now: dt.datetime, radius_km: float
) -> list[Any]:
    """The candidate query of `_offers_query` and `_near`, on the in-memory copy."""
    material = req.material.strip().lower()
    found = []
    for process in req.processes:
        a, b, c = _fit_dims(process, req.size)
        for o in mem.offers_near(process, material, req.lat, req.lon, radius_km):
            if o.dim_a >= a and o.dim_b >= b and o.dim_c >= c and o.expires_at > now:
                found.append(o)
    return found


async def route(
    *, session: AsyncSession, req: Requirements, now: dt.datetime, in_memory: bool = True
) -> RouteAnswer:
    """Answer a routing request: fitting shops best first, and the nearby ones that do not.

    `in_memory` reads the process's copy of the index (`memindex`, brought current from
    the database first); False reads the database's tables, with the same answer (the
    routing tests compare both on random shops).
    """
    dialect = session.get_bind().dialect.name
    mem = await memindex.current(session) if in_memory else None
    if mem is not None:
        rows: Any = _mem_offers(mem, req, now, req.radius_km)
    else:
        stmt = _offers_query(req, now).where(
            _near(HubOffer, dialect, req.lat, req.lon, req.radius_km)
        )
        rows = (await session.execute(stmt)).all()
    best: dict[str, _Plan] = {}
    not_on_hand: dict[str, _Plan] = {}
    caches: tuple[dict[Any, float], dict[tuple[str, str], _Bounds]] = ({}, {})
    p1 = math.radians(req.lat)
    cos_p1 = math.cos(p1)
    for row in rows:
        if mem is not None:
            distance = _distance_to(req.lat, req.lon, p1, cos_p1, row)
        else:
            distance = haversine_km(req.lat, req.lon, row.lat, row.lon)
        if distance > req.radius_km:
            continue
        plan = _plan(row, req, now, distance, caches)
        target = not_on_hand if row.on_hand is False else best
        current = target.get(row.shop_id)
        if current is None or _better(plan, current):
            target[row.shop_id] = plan
    for shop_id in best:
        not_on_hand.pop(shop_id, None)
    excluded: list[_Unfit] = []
    routed: list[_Plan] = []
    for plan in best.values():
        where = f"{plan.distance_km:.1f} km away"
        if plan.job_h > MAX_JOB_H:
            reason = (
                f"the job would take ≈ {plan.job_h:,.0f} h on its best machine ({plan.machine}), "
                f"over a year; {where}"
            )
            excluded.append(_Unfit(plan.distance_km, plan.shop_id, plan.name, reason))
        elif plan.start is None or plan.finish is None:
            reason = (
                f"no free hours for {req.material} in the 7 days reported: not enough for a "
                f"job of ≈ {_hours(plan.job_h)} ({plan.machine}; {where})"
            )
            excluded.append(_Unfit(plan.distance_km, plan.shop_id, plan.name, reason))
        elif req.deadline is not None and plan.finish > req.deadline:
            reason = (
                "no free hours before the deadline: the earliest finish is "
                f"{plan.finish.isoformat(timespec='minutes')} (queue wait {_hours(plan.wait_h)}, "
                f"job ≈ {_hours(plan.job_h)}; {where})"
            )
            excluded.append(_Unfit(plan.distance_km, plan.shop_id, plan.name, reason))
        else:
            routed.append(plan)
    for plan in not_on_hand.values():
        reason = f"no material: no {req.material} on hand ({plan.distance_km:.1f} km away)"
        excluded.append(_Unfit(plan.distance_km, plan.shop_id, plan.name, reason))
    routed.sort(key=lambda p: (p.finish, p.distance_km, p.shop_id))
    taken = set(best) | set(not_on_hand)
    if mem is not None:
        excluded += _mem_others(mem, req, now, taken)
    else:
        excluded += await _others(session, dialect, req, now, taken)
    excluded.sort(key=lambda e: (e.distance_km, e.shop_id))
    excluded = excluded[:EXCLUDED_LIMIT]
    if len(routed) < FEW_FITTING:
        excluded += await _too_far(session, dialect, req, now, mem)
    return RouteAnswer(
        shops=[
            RoutedShop(
                shop_id=p.shop_id,
                name=p.name,
                distance_km=round(p.distance_km, 2),
                earliest_start=p.start,
                earliest_finish=p.finish,
                machine=p.machine,
                reason=_fit_reason(p, req),
            )
            for p in routed[:SHOPS_LIMIT]
            if p.start is not None and p.finish is not None
        ],
        excluded=[ExcludedShop(shop_id=e.shop_id, name=e.name, reason=e.reason) for e in excluded],
    )


@dataclass(frozen=True)
class _Unfit:
    distance_km: float
    shop_id: str
    name: str
    reason: str


def _better(plan: _Plan, current: _Plan) -> bool:
    """Return whether `plan` uses a better-fitting machine than `current` at the same shop."""
    if (plan.finish is None) != (current.finish is None):
        return plan.finish is not None
    if plan.finish is not None and current.finish is not None and plan.finish != current.finish:
        return plan.finish < current.finish
    # Then the smallest machine; ties by name and size, so that the answer never depends on
    # the order the rows come in.
    return _fit_key(plan) < _fit_key(current)


def _fit_key(plan: _Plan) -> tuple[float, str, tuple[float, float, float], float]:
    return math.prod(d or 1 for d in plan.dims), plan.machine, plan.dims, plan.job_h


def _collect(
    near: list[tuple[float, str, str, dt.datetime]],
    rows: Iterable[Any],
    req: Requirements,
    taken: set[str],
) -> None:
    p1 = math.radians(req.lat)
    cos_p1 = math.cos(p1)
    for row in rows:
        if row.shop_id in taken:
            continue
        if hasattr(row, "p2"):
            distance = _distance_to(req.lat, req.lon, p1, cos_p1, row)
        else:
            distance = haversine_km(req.lat, req.lon, row.lat, row.lon)
        if distance <= req.radius_km:
            near.append((distance, row.shop_id, row.name, row.expires_at))


async def _others(
    session: AsyncSession, dialect: str, req: Requirements, now: dt.datetime, taken: set[str]
) -> list[_Unfit]:
    """Return the nearest shops within the radius that do not fit, with the reason."""
    stmt = select(
        HubShopIndex.shop_id,
        HubShopIndex.name,
        HubShopIndex.lat,
        HubShopIndex.lon,
        HubShopIndex.expires_at,
    ).where(_near(HubShopIndex, dialect, req.lat, req.lon, req.radius_km))
    near: list[tuple[float, str, str, dt.datetime]] = []
    if dialect == "postgresql":
        # Nearest first through the GiST index (KNN on the cube distance, which orders as the
        # great circle does), a page at a time until enough shops not already placed are
        # found: a few dozen index entries instead of every shop within the radius (measured
        # at 100,000 shops: 1 ms instead of 30 ms for the whole radius).
        centre = func.ll_to_earth(bindparam("k_lat", req.lat), bindparam("k_lon", req.lon))
        ordered = stmt.order_by(
            func.ll_to_earth(HubShopIndex.lat, HubShopIndex.lon).op("<->")(centre)
        )
        for page in range(KNN_PAGES):
            rows = (await session.execute(ordered.limit(KNN_PAGE).offset(page * KNN_PAGE))).all()
            _collect(near, rows, req, taken)
            if len(rows) < KNN_PAGE or len(near) >= EXCLUDED_LIMIT:
                break
    else:
        _collect(near, (await session.execute(stmt)).all(), req, taken)
    near.sort()
    near = near[:EXCLUDED_LIMIT]
    if not near:
        return []
    offers_stmt = select(
        HubOffer.shop_id,
        HubOffer.process,
        HubOffer.material,
        HubOffer.dim_a,
        HubOffer.dim_b,
        HubOffer.dim_c,
    ).where(HubOffer.shop_id.in_([n[1] for n in near]))
    by_shop: dict[str, list[Any]] = {}
    offers_stmt = offers_stmt.order_by(HubOffer.id)  # as the in-memory copy keeps them
    for offer in (await session.execute(offers_stmt)).all():
        by_shop.setdefault(offer.shop_id, []).append(offer)
    return [
        _Unfit(d, shop_id, name, unfit_reason(req, by_shop.get(shop_id, []), expires_at, now, d))
        for d, shop_id, name, expires_at in near
    ]


def _mem_others(
    mem: memindex.MemIndex, req: Requirements, now: dt.datetime, taken: set[str]
) -> list[_Unfit]:
    """`_others` on the in-memory copy: the nearest shops within the radius not taken.

    Cells are read nearest first, and no further once a cell's lower bound is beyond the
    EXCLUDED_LIMIT-th shop found: the same shops as reading every cell.
    """
    near: list[tuple[float, str, str, dt.datetime]] = []
    for bound, shops in mem.shop_cells_nearest_first(req.lat, req.lon, req.radius_km):
        if len(near) >= EXCLUDED_LIMIT:
            near.sort()
            del near[EXCLUDED_LIMIT:]
            if bound > near[-1][0]:
                break
        _collect(near, shops, req, taken)
    near.sort()
    return [
        _Unfit(d, shop_id, name, unfit_reason(req, mem.offers_of(shop_id), expires_at, now, d))
        for d, shop_id, name, expires_at in near[:EXCLUDED_LIMIT]
    ]


def unfit_reason(
    req: Requirements, offers: list[Any], expires_at: dt.datetime, now: dt.datetime, km: float
) -> str:
    """Return the first reason a shop cannot take the job (its offers as rows)."""
    where = f"{km:.1f} km away"
    if expires_at <= now:
        ago = (now - expires_at).total_seconds() / 60
        at = expires_at.isoformat(timespec="minutes")
        return f"report expired {ago:.0f} min ago ({at}); {where}"
    kinds = [o for o in offers if o.process in req.processes]
    wanted = " or ".join(PROCESS_NAMES[p] for p in req.processes)
    if not kinds:
        return f"no {wanted}; {where}"
    material = req.material.strip().lower()
    working = [o for o in kinds if o.material == material]
    if not working:
        return f"no material: no {wanted} here works {req.material}; {where}"
    largest = max(working, key=lambda o: o.dim_a * o.dim_b * max(o.dim_c, 1))
    return (
        f"no machine large enough: the part is {_dims_text(req.size)} mm, the largest "
        f"{PROCESS_NAMES[largest.process]} for {req.material} here takes "
        f"{_dims_text((largest.dim_a, largest.dim_b, largest.dim_c))} mm; {where}"
    )


async def _too_far(
    session: AsyncSession,
    dialect: str,
    req: Requirements,
    now: dt.datetime,
    mem: memindex.MemIndex | None = None,
) -> list[_Unfit]:
    """Return the nearest shops beyond the radius that would fit, as "too far"."""
    outer = req.radius_km * TOO_FAR_FACTOR
    if mem is not None:
        rows: Any = _mem_offers(mem, req, now, outer)
    else:
        stmt = _offers_query(req, now).where(_near(HubOffer, dialect, req.lat, req.lon, outer))
        rows = (await session.execute(stmt)).all()
    nearest: dict[str, tuple[float, str]] = {}
    for row in rows:
        distance = haversine_km(req.lat, req.lon, row.lat, row.lon)
        if (
            req.radius_km < distance <= outer
            and distance < nearest.get(row.shop_id, (math.inf,))[0]
        ):
            nearest[row.shop_id] = (distance, row.shop_name)
    ordered = sorted((d, s, n) for s, (d, n) in nearest.items())[:TOO_FAR_LIMIT]
    return [
        _Unfit(d, s, n, f"too far: {d:.1f} km away, beyond the {req.radius_km:g} km asked for")
        for d, s, n in ordered
    ]


__all__ = ["earliest_start", "haversine_km", "route", "unfit_reason"]
