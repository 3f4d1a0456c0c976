"""The routing index: derived rows rebuilt from each shop's newest stored report.

`index_report` is what ingest and mirroring call once a report is stored. It replaces the
shop's row in `hub_shop_index` and its rows in `hub_offers` (one per machine model and
material it works), so the index never holds anything a stored, verified report did not say.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, delete, insert, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.errors import BadRequestError
from microfactory.network.hub.models import HubIndexLog, HubIndexVersion, HubOffer, HubShopIndex
from microfactory.network.hub.verify import VerifiedReport

PROCESSES = ("fdm_printing", "cnc_milling", "laser_cutting")
FREE_DAYS = 7
MAX_WAIT_H = 10 * 366 * 24.0


def _num(value: Any, name: str, *, default: float | None = None) -> float:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequestError(f"{name} must be a number")
    return float(value)


def _str(value: Any, limit: int = 200) -> str:
    return value.strip()[:limit] if isinstance(value, str) else ""


def _list(value: Any, name: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequestError(f"{name} must be a list")
    return value


def location(okw: dict[str, Any]) -> tuple[float, float, str, str]:
    """Return (lat, lon, city, country) from the report's OKW location."""
    loc = okw.get("location")
    gps = loc.get("gpsCoordinates") if isinstance(loc, dict) else None
    if not isinstance(gps, dict):
        raise BadRequestError("okw.location.gpsCoordinates {lat, lon} is needed for routing")
    lat = _num(gps.get("lat"), "okw.location.gpsCoordinates.lat")
    lon = _num(gps.get("lon"), "okw.location.gpsCoordinates.lon")
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise BadRequestError("okw.location.gpsCoordinates is out of range")
    assert isinstance(loc, dict)
    return lat, lon, _str(loc.get("city")), _str(loc.get("country"), 64)


def _equipment(okw: dict[str, Any]) -> list[dict[str, Any]]:
    items = []
    for n, raw in enumerate(_list(okw.get("equipment"), "okw.equipment")):
        where = f"okw.equipment[{n}]"
        if not isinstance(raw, dict):
            raise BadRequestError(f"{where} must be an object")
        process = raw.get("process")
        if process not in PROCESSES:
            raise BadRequestError(f"{where}.process must be one of {', '.join(PROCESSES)}")
        volume = raw.get("workVolume")
        if not isinstance(volume, dict):
            raise BadRequestError(f"{where}.workVolume {{x, y, z}} (mm) is missing")
        dims = sorted(
            (max(_num(volume.get(a), f"{where}.workVolume.{a}", default=0.0), 0.0) for a in "xyz"),
            reverse=True,
        )
        materials = [
            m.strip() for m in _list(raw.get("materialsWorked"), where) if isinstance(m, str)
        ]
        quantity = raw.get("quantity", 1)
        items.append(
            {
                "process": process,
                "machine": " ".join(p for p in (_str(raw.get("make")), _str(raw.get("model"))) if p)
                or process,
                "quantity": min(quantity, 10_000)
                if isinstance(quantity, int) and quantity > 0
                else 1,
                "dims": dims,
                "materials": [m for m in materials if m],
                "nozzle": raw.get("nozzleSize")
                if isinstance(raw.get("nozzleSize"), int | float)
                else None,
                "laser_w": raw.get("laserPower")
                if isinstance(raw.get("laserPower"), int | float)
                else None,
            }
        )
    return items


def _free_hours(live: dict[str, Any]) -> dict[tuple[str, str], dict[str, float]]:
    """Return free hours by (process, lower-case material) and ISO day.

    The hot loop of ingest (a week of entries per process and material): checks are kept
    to one pass, and a field's name is only formatted for an error.
    """
    free: dict[tuple[str, str], dict[str, float]] = {}
    days_seen: set[str] = set()
    keys: dict[tuple[str, str], tuple[str, str]] = {}
    for n, raw in enumerate(_list(live.get("freeHours"), "live.freeHours")):
        if not isinstance(raw, dict):
            raise BadRequestError(f"live.freeHours[{n}] must be an object")
        day, process, material = raw.get("date"), raw.get("process"), raw.get("material")
        if not isinstance(day, str) or not isinstance(material, str) or process not in PROCESSES:
            raise BadRequestError(f"live.freeHours[{n}] needs date, process and material")
        if day not in days_seen:
            try:
                dt.date.fromisoformat(day)
            except ValueError:
                raise BadRequestError(f"live.freeHours[{n}].date is not an ISO date") from None
            days_seen.add(day)
        value = raw.get("hours")
        if (type(value) is float and math.isfinite(value)) or type(value) is int:
            hours = max(float(value), 0.0)
        else:
            hours = max(_num(value, f"live.freeHours[{n}].hours"), 0.0)
        key = keys.get((process, material))
        if key is None:
            key = keys[(process, material)] = (process, material.strip().lower())
        per_day = free.get(key)
        if per_day is None:
            per_day = free[key] = {}
        per_day[day] = per_day.get(day, 0.0) + hours
    return free


def _waits(live: dict[str, Any]) -> dict[str, dict[str, float]]:
    waits = {}
    for n, raw in enumerate(_list(live.get("queue"), "live.queue")):
        if not isinstance(raw, dict) or raw.get("process") not in PROCESSES:
            raise BadRequestError(f"live.queue[{n}] needs a process")
        waits[raw["process"]] = {
            "depth": max(_num(raw.get("depth"), f"live.queue[{n}].depth", default=0.0), 0.0),
            # Capped at ten years: a wait is added to dates, which end at year 9999.
            "wait_h": min(
                max(_num(raw.get("waitHours"), f"live.queue[{n}].waitHours", default=0.0), 0),
                MAX_WAIT_H,
            ),
        }
    return waits


def _on_hand(live: dict[str, Any]) -> dict[str, float] | None:
    """Return the amount on hand by lower-case material, or None when the shop keeps none."""
    stock = _list(live.get("materials"), "live.materials")
    if not stock:
        return None
    amounts: dict[str, float] = {}
    for raw in stock:
        if isinstance(raw, dict) and isinstance(raw.get("material"), str):
            amount = raw.get("amount")
            value = float(amount) if isinstance(amount, int | float) else 1.0
            key = raw["material"].strip().lower()
            amounts[key] = amounts.get(key, 0.0) + max(value, 0.0)
    return amounts


_WEEKS: dict[str, tuple[str, ...]] = {}  # first day as written -> FREE_DAYS ISO days


def _week(first_day: str) -> tuple[str, ...]:
    week = _WEEKS.get(first_day)
    if week is None:
        if len(_WEEKS) > 64:  # reports name this week's days: a few keys at a time
            _WEEKS.clear()
        first = dt.date.fromisoformat(first_day)
        week = _WEEKS[first_day] = tuple(
            (first + dt.timedelta(days=i)).isoformat() for i in range(FREE_DAYS)
        )
    return week


def _days(per_day: dict[str, float]) -> tuple[str, str]:
    """Return (first day, comma-separated hours for FREE_DAYS days from it)."""
    if not per_day:
        return "", ""
    week = _week(min(per_day))
    return week[0], ",".join(f"{per_day.get(day, 0.0):g}" for day in week)


@dataclass(frozen=True)
class _Parsed:
    lat: float
    lon: float
    city: str
    country: str
    equipment: list[dict[str, Any]]
    free: dict[tuple[str, str], dict[str, float]]
    waits: dict[str, dict[str, float]]
    on_hand: dict[str, float] | None
    timezone: str
    name: str


class Derived:
    """The index rows a report gives: the shop's row and its offers (column dicts).

    The report's fields are checked when it is derived (400 on a bad one); the rows are
    built when first read, so a report superseded in the same page of a mirror (checked,
    stored, never indexed) costs only the checks.
    """

    def __init__(self, report: VerifiedReport, cursor: int, parsed: _Parsed) -> None:
        self._report, self._cursor, self._parsed = report, cursor, parsed

    @functools.cached_property
    def _rows(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return _build(self._report, self._cursor, self._parsed)

    def built(self, report: VerifiedReport) -> Derived:
        """Return these rows built now, beside `report` (a slimmer copy of the report), and
        nothing they were built from: what a worker process sends back to the server."""
        out = Derived(report, self._cursor, self._parsed)
        out.__dict__["_rows"] = self._rows
        del out._parsed
        return out

    @property
    def shop(self) -> dict[str, Any]:
        """The shop's `hub_shop_index` row."""
        return self._rows[0]

    @property
    def offers(self) -> list[dict[str, Any]]:
        """Its `hub_offers` rows."""
        return self._rows[1]


def derive(report: VerifiedReport, cursor: int = 0) -> Derived:
    """Check a verified report's fields for the index (400 on a bad one); see `Derived`."""
    okw, live = report.payload["okw"], report.payload["live"]
    lat, lon, city, country = location(okw)
    equipment = _equipment(okw)
    free = _free_hours(live)
    waits = _waits(live)
    on_hand = _on_hand(live)
    _typical(okw)
    timezone = _str(live.get("timezone"), 64) or "UTC"
    name = _str(okw.get("name")) or report.shop_id[:12]
    parsed = _Parsed(lat, lon, city, country, equipment, free, waits, on_hand, timezone, name)
    return Derived(report, cursor, parsed)


def _typical(okw: dict[str, Any]) -> list[str]:
    return [
        m for m in _list(okw.get("typicalMaterials"), "okw.typicalMaterials") if isinstance(m, str)
    ]


def _build(
    report: VerifiedReport, cursor: int, parsed: _Parsed
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    okw = report.payload["okw"]
    lat, lon, city, country = parsed.lat, parsed.lon, parsed.city, parsed.country
    equipment, free, waits, on_hand = parsed.equipment, parsed.free, parsed.waits, parsed.on_hand
    timezone, name = parsed.timezone, parsed.name
    offers = []
    columns = {key: _days(per_day) for key, per_day in free.items()}
    for item in equipment:
        for material in item["materials"]:
            key = material.lower()
            free_from, free_hours = columns.get((item["process"], key), ("", ""))
            a, b, c = item["dims"]
            offers.append(
                {
                    "shop_id": report.shop_id,
                    "shop_name": name,
                    "process": item["process"],
                    "material": key[:64],
                    "machine": item["machine"][:200],
                    "quantity": item["quantity"],
                    "dim_a": a,
                    "dim_b": b,
                    "dim_c": c,
                    "nozzle_mm": item["nozzle"],
                    "laser_w": item["laser_w"],
                    "lat": lat,
                    "lon": lon,
                    "expires_at": report.expires_at,
                    "wait_h": waits.get(item["process"], {}).get("wait_h", 0.0),
                    "on_hand": None if on_hand is None else on_hand.get(key, 0.0) > 0,
                    "free_from": free_from,
                    "free_hours": free_hours,
                    "timezone": timezone,
                }
            )
    processes = sorted({e["process"] for e in equipment})
    typical = _typical(okw)
    materials = sorted({m for e in equipment for m in e["materials"]} | set(typical), key=str.lower)
    free_by_process: dict[str, dict[str, float]] = {}
    for (process, _material), per_day in free.items():
        target = free_by_process.setdefault(process, {})
        for day, hours in per_day.items():
            target[day] = max(target.get(day, 0.0), hours)
    row = {
        "shop_id": report.shop_id,
        "report_cursor": cursor,
        "sequence": report.sequence,
        "name": name,
        "url": _str(okw.get("url"), 500),
        "city": city,
        "country": country,
        "lat": lat,
        "lon": lon,
        "issued_at": report.issued_at,
        "expires_at": report.expires_at,
        "processes": processes,
        "materials": materials,
        "summary": {
            "accessType": _str(okw.get("accessType"), 64),
            "timezone": timezone,
            "equipment": [
                {
                    "process": e["process"],
                    "machine": e["machine"],
                    "quantity": e["quantity"],
                    "workVolume": e["dims"],
                    "materials": e["materials"],
                }
                for e in equipment
            ],
            "queue": [{"process": p, **w} for p, w in sorted(waits.items())],
            "freeHours": {p: dict(sorted(d.items())) for p, d in sorted(free_by_process.items())},
        },
    }
    return row, offers


async def index_report(
    *,
    session: AsyncSession,
    report: VerifiedReport,
    cursor: int,
    derived: Derived | None = None,
) -> None:
    """Replace the shop's index row and offers with what this stored report says.

    `derived` is `derive(report)` when the caller has it already (ingest derives first, to
    refuse a report the index cannot take before storing it). Core inserts, not ORM
    objects: 0.1 ms instead of 1 ms for a report with 10 offers.
    """
    derived = derived or derive(report, cursor)
    await index_many(session=session, reports=[(report, derived, cursor)])


async def index_many(
    *, session: AsyncSession, reports: list[tuple[VerifiedReport, Derived, int]]
) -> None:
    """Re-index several shops at once, each from its (report, derived rows, cursor)."""
    if not reports:
        return
    shop_ids = [r.shop_id for r, _, _ in reports]
    await _drop(session, shop_ids)
    # Core statements on the tables, one executemany each: the ORM's bulk path spends
    # ~0.2 ms a row sorting out what it would not need here.
    await session.execute(
        insert(_SHOP_INDEX), [{**d.shop, "report_cursor": c} for _, d, c in reports]
    )
    offers = [o for _, d, _ in reports for o in d.offers]
    if offers:
        await session.execute(insert(_OFFERS), offers)
    await bump(session=session, shop_ids=shop_ids)


_OFFERS = cast(Table, HubOffer.__table__)
_SHOP_INDEX = cast(Table, HubShopIndex.__table__)
_VERSION = cast(Table, HubIndexVersion.__table__)
_LOG = cast(Table, HubIndexLog.__table__)


async def _drop(session: AsyncSession, shop_ids: list[str]) -> None:
    # On the tables, not the entities: nothing to synchronise in the session's objects.
    await session.execute(delete(_OFFERS).where(_OFFERS.c.shop_id.in_(shop_ids)))
    await session.execute(delete(_SHOP_INDEX).where(_SHOP_INDEX.c.shop_id.in_(shop_ids)))


async def drop_shop(*, session: AsyncSession, shop_id: str) -> None:
    """Remove a shop from the index (revoked)."""
    await _drop(session, [shop_id])
    await bump(session=session, shop_ids=[shop_id])


async def bump(*, session: AsyncSession, shop_ids: Iterable[str]) -> int:
    """Give this transaction's changes to the index a new version; log the shops changed.

    Call it last, after the index rows changed: the UPDATE locks the version row until
    commit, which serialises the index's writers (see `memindex`), so the lock should be
    held for as short a time as can be.
    """
    result = await session.execute(
        update(_VERSION)
        .where(_VERSION.c.id == 1)
        .values(version=_VERSION.c.version + 1)
        .returning(_VERSION.c.version)
    )
    version = result.scalar_one_or_none()
    if version is None:  # a database whose tables were emptied (the tests do)
        # Two writers may both find no row: the second waits for the first's row and bumps it.
        upsert = (
            pg_insert(_VERSION)
            if session.get_bind().dialect.name == "postgresql"
            else sqlite_insert(_VERSION)
        )
        result = await session.execute(
            upsert.values(id=1, version=1, log_floor=0)
            .on_conflict_do_update(
                index_elements=[_VERSION.c.id], set_={"version": _VERSION.c.version + 1}
            )
            .returning(_VERSION.c.version)
        )
        version = result.scalar_one()
    rows = [{"version": version, "shop_id": s} for s in sorted(set(shop_ids))]
    if rows:
        await session.execute(insert(_LOG), rows)
    return int(version)
