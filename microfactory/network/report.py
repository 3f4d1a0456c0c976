"""The capacity report: OKW facility and equipment from the registry, and live capacity.

`content` reads the database and builds everything but the times and the sequence; `issue`
adds those (taking the next sequence number, which only grows) and `sign` makes the compact
JWS over the report's RFC 8785 canonical JSON.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import rfc8785
from sqlalchemy import case, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.bookings import service as booking_service
from microfactory.bookings.models import HOLDING_STATUSES, Booking, MaintenanceBlock
from microfactory.config import Settings
from microfactory.jobs.matcher import DEFAULT_JOB_S
from microfactory.jobs.models import Job, JobState
from microfactory.machines.models import Machine, MachineKind
from microfactory.materials.models import MaterialStock
from microfactory.network import capacity
from microfactory.network import service as network_service
from microfactory.network.identity import ShopKey
from microfactory.network.models import ReportSequence

REPORT_TYPE = "microfactory.capacity/1"

PROCESS_OF_KIND = {
    MachineKind.FDM_PRINTER: "fdm_printing",
    MachineKind.CNC_MILL: "cnc_milling",
    MachineKind.LASER_CUTTER: "laser_cutting",
}
# OKW labels processes and equipment types with Wikipedia URLs.
PROCESS_URL = {
    "fdm_printing": "https://en.wikipedia.org/wiki/Fused_filament_fabrication",
    "cnc_milling": "https://en.wikipedia.org/wiki/Milling_(machining)",
    "laser_cutting": "https://en.wikipedia.org/wiki/Laser_cutting",
}
EQUIPMENT_URL = {
    "fdm_printing": "https://en.wikipedia.org/wiki/3D_printing",
    "cnc_milling": "https://en.wikipedia.org/wiki/Milling_machine",
    "laser_cutting": "https://en.wikipedia.org/wiki/Laser_cutting",
}
WAITING_STATES = (JobState.QUEUED, JobState.ASSIGNED)
ON_MACHINE_STATES = (JobState.RUNNING, JobState.PAUSED)


def iso(moment: dt.datetime) -> str:
    """Format a moment as UTC ISO 8601 with a Z, to the second."""
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _num(value: float) -> float | int:
    """Return whole numbers as int, so that the report reads 250 rather than 250.0."""
    return int(value) if float(value).is_integer() else round(float(value), 3)


@dataclass(frozen=True)
class _JobRow:
    """The columns of a job that the capacity needs (not its JSON documents)."""

    state: JobState
    machine_kind: MachineKind
    machine_id: int | None
    requested_machine_id: int | None
    material: str | None
    estimated_s: float | None
    started_at: dt.datetime | None
    paused_at: dt.datetime | None
    paused_s: float | None


def _estimate_s(job: _JobRow) -> float:
    # The analysed file holds every copy: its estimate is the job's. No estimate: an hour,
    # as the matcher assumes.
    value = job.estimated_s
    return float(value) if value is not None and value > 0 else DEFAULT_JOB_S


def _remaining_s(job: _JobRow, now: dt.datetime) -> float:
    """Return the estimated time left of a running or paused job."""
    total = _estimate_s(job)
    if job.started_at is None:
        return total
    end = job.paused_at if job.state is JobState.PAUSED and job.paused_at else now
    active = (end - job.started_at).total_seconds() - (job.paused_s or 0.0)
    return max(total - max(active, 0.0), 0.0)


async def _jobs(session: AsyncSession) -> list[_JobRow]:
    """Return the jobs waiting or on a machine, in queue order, without their documents.

    Only the estimate is read out of the analysis JSON: loading whole jobs (six JSON
    documents each, a time profile among them) took most of the report's time with 300 jobs.
    """
    estimate = Job.analysis["estimated_time_s"].as_float()
    result = await session.execute(
        select(
            Job.state,
            Job.machine_kind,
            Job.machine_id,
            Job.requested_machine_id,
            Job.material,
            estimate,
            Job.started_at,
            Job.paused_at,
            Job.paused_s,
        )
        .where(Job.state.in_([*WAITING_STATES, *ON_MACHINE_STATES]))
        .order_by(Job.priority.desc(), Job.created_at, Job.id)
    )
    return [_JobRow(*row) for row in result.all()]


@dataclass
class _Inputs:
    machines: list[Machine]
    stocks: list[MaterialStock]
    materials_of: dict[int, frozenset[str]]


def _machine_materials(machine: Machine, stocks: list[MaterialStock]) -> frozenset[str]:
    caps = machine.capabilities or {}
    names = {str(m) for m in caps.get("materials") or [] if str(m).strip()}
    if caps.get("loaded_material"):
        names.add(str(caps["loaded_material"]))
    names.update(s.material for s in stocks if s.machine_id == machine.id)
    return frozenset(names)


def _location(profile: network_service.Profile) -> dict[str, Any]:
    location: dict[str, Any] = {"city": profile.city, "country": profile.country}
    if profile.lat is not None and profile.lon is not None:
        lat, lon = profile.lat, profile.lon
        if profile.round_to_city:
            lat, lon = round(lat, 1), round(lon, 1)
        location["gpsCoordinates"] = {"lat": _num(lat), "lon": _num(lon)}
    return location


def _equipment(inputs: _Inputs) -> list[dict[str, Any]]:
    """Group the registry's machines by make, model and specification, with a quantity."""
    groups: dict[str, dict[str, Any]] = {}
    for machine in inputs.machines:
        process = PROCESS_OF_KIND.get(machine.kind)
        if process is None:
            continue
        caps = machine.capabilities or {}
        x = machine.build_volume_x_mm or 0
        y = machine.build_volume_y_mm or 0
        z = 0 if process == "laser_cutting" else machine.build_volume_z_mm or 0
        item: dict[str, Any] = {
            "process": process,
            "equipmentType": EQUIPMENT_URL[process],
            "manufacturingProcess": PROCESS_URL[process],
            "make": str(caps.get("make") or ""),
            "model": str(caps.get("model") or ""),
            "materialsWorked": sorted(inputs.materials_of[machine.id]),
            "workVolume": {"x": _num(x), "y": _num(y), "z": _num(z)},
        }
        if process == "fdm_printing":
            item["buildVolume"] = dict(item["workVolume"])
            if caps.get("nozzle_diameter_mm"):
                item["nozzleSize"] = _num(caps["nozzle_diameter_mm"])
        else:
            item["xTravel"], item["yTravel"] = _num(x), _num(y)
            if process == "cnc_milling":
                item["zTravel"] = _num(z)
                if caps.get("spindle_max_rpm"):
                    item["maximumSpindleSpeed"] = _num(caps["spindle_max_rpm"])
            elif caps.get("laser_power_w"):
                item["laserPower"] = _num(caps["laser_power_w"])
        if machine.power_w:
            item["powerRating"] = _num(machine.power_w)
        key = json.dumps(item, sort_keys=True)
        if key in groups:
            groups[key]["quantity"] += 1
        else:
            groups[key] = {**item, "quantity": 1}
    return sorted(
        groups.values(),
        key=lambda e: (e["process"], e["make"], e["model"], json.dumps(e, sort_keys=True)),
    )


def _materials_on_hand(inputs: _Inputs) -> list[dict[str, Any]]:
    names = {m.id: m.name for m in inputs.machines}
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for stock in inputs.stocks:
        key = (stock.material, stock.colour, stock.unit)
        row = rows.setdefault(
            key,
            {
                "material": stock.material,
                "colour": stock.colour,
                "amount": 0.0,
                "unit": stock.unit,
                "loadedOn": set(),
            },
        )
        row["amount"] += stock.amount
        if stock.machine_id is not None and stock.machine_id in names:
            row["loadedOn"].add(names[stock.machine_id])
    for machine in inputs.machines:
        loaded = (machine.capabilities or {}).get("loaded_material")
        same = [r for k, r in sorted(rows.items()) if k[0] == loaded]
        if loaded and same and not any(machine.name in r["loadedOn"] for r in same):
            same[0]["loadedOn"].add(machine.name)
    return [
        {**row, "amount": _num(row["amount"]), "loadedOn": sorted(row["loadedOn"])}
        for _, row in sorted(rows.items())
    ]


async def _live(
    session: AsyncSession, inputs: _Inputs, tz: ZoneInfo, now: dt.datetime
) -> dict[str, Any]:
    today = now.astimezone(tz).date()
    end = capacity.day_bounds(today + dt.timedelta(days=capacity.HORIZON_DAYS - 1), tz)[1]
    machines = [m for m in inputs.machines if m.kind in PROCESS_OF_KIND]
    ids = [m.id for m in machines]
    busy: dict[int, list[capacity.Interval]] = defaultdict(list)
    bookings = await session.execute(
        select(Booking.machine_id, Booking.start_at, Booking.occupied_until).where(
            Booking.machine_id.in_(ids),
            Booking.status.in_(HOLDING_STATUSES),
            Booking.start_at < end,
            Booking.occupied_until > now,
        )
    )
    for machine_id, start, until in bookings.all():
        busy[machine_id].append((start, until))
    blocks = await session.execute(
        select(MaintenanceBlock.machine_id, MaintenanceBlock.start_at, MaintenanceBlock.end_at)
        .where(MaintenanceBlock.machine_id.in_(ids), MaintenanceBlock.removed_at.is_(None))
        .where(MaintenanceBlock.start_at < end, MaintenanceBlock.end_at > now)
    )
    for machine_id, start, until in blocks.all():
        busy[machine_id].append((start, until))

    jobs = await _jobs(session)
    own: dict[int, float] = defaultdict(float)
    queued: list[capacity.QueuedWork] = []
    depth: dict[str, int] = defaultdict(int)
    for job in jobs:
        process = PROCESS_OF_KIND.get(job.machine_kind)
        if process is None:
            continue
        if job.state in WAITING_STATES:
            depth[process] += 1
        if job.state in ON_MACHINE_STATES and job.machine_id is not None:
            own[job.machine_id] += _remaining_s(job, now)
        elif job.state is JobState.ASSIGNED and job.machine_id is not None:
            own[job.machine_id] += _estimate_s(job)
        elif job.requested_machine_id is not None:
            own[job.requested_machine_id] += _estimate_s(job)
        else:
            queued.append(capacity.QueuedWork(process, _estimate_s(job), job.material))

    result = capacity.compute(
        machines=[
            capacity.MachineTime(
                id=m.id,
                process=PROCESS_OF_KIND[m.kind],
                materials=inputs.materials_of[m.id],
                usable=m.enabled and not m.maintenance,
                busy=tuple(busy[m.id]),
                own_work_s=own[m.id],
            )
            for m in machines
        ],
        queued=queued,
        weekly=await booking_service.weekly_schedule(session=session),
        closures=await booking_service.closure_days(session=session),
        tz=tz,
        now=now,
        depth=dict(depth),
    )
    return {
        "timezone": tz.key,
        "freeHours": [
            {
                "date": d.date.isoformat(),
                "process": d.process,
                "material": d.material,
                "hours": _num(d.hours),
            }
            for d in result.free
        ],
        "queue": [
            {"process": q.process, "depth": q.depth, "waitHours": _num(q.wait_hours)}
            for q in result.queue
        ],
        "materials": _materials_on_hand(inputs),
    }


async def content(
    *, session: AsyncSession, settings: Settings, shop: ShopKey, now: dt.datetime
) -> dict[str, Any]:
    """Return the report without its times and sequence (the part a change shows in)."""
    profile = await network_service.get_profile(session=session, settings=settings)
    machines = list((await session.execute(select(Machine).order_by(Machine.id))).scalars())
    stocks = list(
        (await session.execute(select(MaterialStock).order_by(MaterialStock.id))).scalars()
    )
    inputs = _Inputs(
        machines=machines,
        stocks=stocks,
        materials_of={m.id: _machine_materials(m, stocks) for m in machines},
    )
    equipment = _equipment(inputs)
    processes = sorted({e["process"] for e in equipment})
    okw: dict[str, Any] = {
        "name": profile.name,
        "url": profile.url,
        "description": profile.description,
        "contact": profile.contact,
        "location": _location(profile),
        "facilityStatus": "Active",
        "accessType": profile.access_type,
        "manufacturingProcesses": [PROCESS_URL[p] for p in processes],
        "typicalMaterials": sorted(
            {x for e in equipment for x in e["materialsWorked"]} | {s.material for s in stocks}
        ),
        "equipment": equipment,
    }
    tz = ZoneInfo(settings.shop_timezone)
    return {
        "type": REPORT_TYPE,
        "shop_id": shop.shop_id,
        "key": shop.public_jwk(),
        "okw": okw,
        "live": await _live(session, inputs, tz, now),
    }


def fingerprint(report_content: dict[str, Any]) -> str:
    """Return a digest of a report's content: equal content, equal digest."""
    return hashlib.sha256(rfc8785.dumps(report_content)).hexdigest()


async def next_sequence(*, session: AsyncSession, now: dt.datetime) -> int:
    """Take the next report sequence number (atomic; it only grows, across restarts).

    It is the larger of the last one + 1 and the Unix time in seconds: a shop whose database
    was restored from a backup, or made afresh beside its old key, still sends sequences
    greater than the hubs have seen, instead of replays they refuse.
    """
    floor = int(now.timestamp())
    dialect = session.get_bind().dialect.name
    insert = (pg_insert if dialect == "postgresql" else sqlite_insert)(ReportSequence)
    await session.execute(
        insert.values(id=1, last=0).on_conflict_do_nothing(index_elements=[ReportSequence.id])
    )
    result = await session.execute(
        update(ReportSequence)
        .where(ReportSequence.id == 1)
        .values(last=case((ReportSequence.last + 1 > floor, ReportSequence.last + 1), else_=floor))
        .returning(ReportSequence.last)
        .execution_options(synchronize_session=False)
    )
    return int(result.scalar_one())


def finish(
    report_content: dict[str, Any], *, sequence: int, now: dt.datetime, ttl_s: int
) -> dict[str, Any]:
    """Return the full report: the content with issuedAt, expiresAt and sequence."""
    live = {
        "issuedAt": iso(now),
        "expiresAt": iso(now + dt.timedelta(seconds=ttl_s)),
        "sequence": sequence,
        **report_content["live"],
    }
    return {**report_content, "live": live}


async def issue(
    *, session: AsyncSession, settings: Settings, shop: ShopKey, now: dt.datetime
) -> dict[str, Any]:
    """Build a new report with the next sequence number (the caller commits)."""
    body = await content(session=session, settings=settings, shop=shop, now=now)
    sequence = await next_sequence(session=session, now=now)
    return finish(body, sequence=sequence, now=now, ttl_s=settings.network_report_ttl_s)


def canonical(report: dict[str, Any]) -> bytes:
    """Return the report's RFC 8785 canonical JSON (the signed payload)."""
    return rfc8785.dumps(report)


def sign(report: dict[str, Any], shop: ShopKey) -> str:
    """Return the report as a compact JWS signed by the shop's key."""
    return shop.sign(canonical(report))
