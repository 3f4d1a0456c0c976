"""Capacity report benchmark: a shop with 50 machines and a full week of bookings.

For SQLite and (when MICROFACTORY_TEST_POSTGRES_URL is set) PostgreSQL: migrate a fresh
database, then load a shop of 50 machines (30 FDM printers of 3 models, 10 lasers, 10 mills),
opening hours Monday to Saturday 08:00-22:00, every machine's next 7 days filled with 1-3 h
slots, each booked with probability 0.7 (1,427 bookings with the fixed seed), 60 maintenance
blocks, 300 queued jobs and 40 material stocks. Then time, median and p95 of repeated runs:

1. `GET /api/v1/network/capacity?format=jws` through the app in-process (the whole request:
   authentication, reads, free hours, sequence, RFC 8785, Ed25519 signature; the clock moves
   on between requests, so each one issues a new report rather than reusing the last);
2. the report's content alone (`network.report.content`: the reads and the free hours);
3. the free-hours computation alone, on the same inputs (`network.capacity.compute`);

against, in the same run, `GET /api/v1/machines` of the same 50 machines (the baseline: a
listing of the same registry through the same app).

Run: .venv/bin/python bench/bench_report.py [--repeat 30]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from sqlalchemy import create_engine, text

from microfactory import migrate
from microfactory.accounts import service as account_service
from microfactory.accounts.models import Role, TokenKind
from microfactory.accounts.schemas import UserCreate
from microfactory.app import create_app
from microfactory.bookings.models import Booking, BookingStatus, MaintenanceBlock, OpeningHours
from microfactory.config import Settings
from microfactory.jobs.models import Job, JobState
from microfactory.machines.models import Machine, MachineKind
from microfactory.materials.models import MaterialStock
from microfactory.network import capacity, identity, report, routes

SEED = 20261202
NOW = dt.datetime(2026, 11, 30, 7, 0, tzinfo=dt.UTC)  # Monday 08:00 in Brussels
OPEN_H, CLOSE_H = 8, 22


def _machines() -> list[Machine]:
    out = []
    models = [
        ("Prusa", "MK4", (250, 210, 220)),
        ("Prusa", "XL", (360, 360, 360)),
        ("Bambu Lab", "X1C", (256, 256, 256)),
    ]
    for i in range(30):
        make, model, (x, y, z) = models[i % 3]
        out.append(
            Machine(
                name=f"{model} #{i + 1}",
                kind=MachineKind.FDM_PRINTER,
                driver="manual",
                build_volume_x_mm=x,
                build_volume_y_mm=y,
                build_volume_z_mm=z,
                capabilities={
                    "make": make,
                    "model": model,
                    "nozzle_diameter_mm": 0.4,
                    "materials": ["PLA", "PETG"] + (["ASA"] if i % 3 == 2 else []),
                },
                connection={},
            )
        )
    for i in range(10):
        out.append(
            Machine(
                name=f"Laser #{i + 1}",
                kind=MachineKind.LASER_CUTTER,
                driver="manual",
                build_volume_x_mm=600,
                build_volume_y_mm=400,
                build_volume_z_mm=50,
                capabilities={
                    "make": "Trotec",
                    "model": "Speedy 100",
                    "laser_power_w": 60,
                    "materials": ["plywood", "acrylic", "cardboard"],
                },
                connection={},
            )
        )
    for i in range(10):
        out.append(
            Machine(
                name=f"Mill #{i + 1}",
                kind=MachineKind.CNC_MILL,
                driver="manual",
                build_volume_x_mm=600,
                build_volume_y_mm=400,
                build_volume_z_mm=100,
                capabilities={
                    "make": "Shapeoko",
                    "model": "4",
                    "spindle_max_rpm": 24000,
                    "materials": ["MDF", "plywood", "aluminium"],
                },
                connection={},
            )
        )
    return out


async def _load(app: Any) -> tuple[dict[str, str], int]:
    rng = random.Random(SEED)
    async with app.state.sessionmaker() as session:
        user = await account_service.create(
            session=session,
            user_in=UserCreate(username="bench", password="bench-pass-1", role=Role.ADMIN),
        )
        token, _ = await account_service.issue_token(
            session=session, user=user, kind=TokenKind.PERSONAL
        )
        machines = _machines()
        session.add_all(machines)
        for d in range(6):
            session.add(OpeningHours(weekday=d, open_minute=OPEN_H * 60, close_minute=CLOSE_H * 60))
        await session.flush()
        bookings = 0
        for m in machines:
            for day in range(7):
                local0 = NOW.replace(hour=OPEN_H - 1) + dt.timedelta(days=day)
                t = local0
                end_of_day = local0 + dt.timedelta(hours=CLOSE_H - OPEN_H)
                while t < end_of_day:
                    length = dt.timedelta(hours=rng.choice((1, 2, 3)))
                    if rng.random() < 0.7 and t + length <= end_of_day:
                        session.add(
                            Booking(
                                machine_id=m.id,
                                user_id=user.id,
                                start_at=t,
                                end_at=t + length,
                                occupied_until=t + length + dt.timedelta(minutes=15),
                                status=BookingStatus.BOOKED,
                            )
                        )
                        bookings += 1
                    t += length + dt.timedelta(minutes=15)
        for i in range(60):
            m = machines[i % 50]
            start = NOW + dt.timedelta(hours=rng.randint(0, 160))
            session.add(
                MaintenanceBlock(
                    machine_id=m.id,
                    start_at=start,
                    end_at=start + dt.timedelta(hours=2),
                    reason="bench",
                )
            )
        for i in range(300):
            m = machines[rng.randrange(50)]
            session.add(
                Job(
                    owner_id=user.id,
                    title=f"job {i}",
                    state=JobState.QUEUED,
                    machine_kind=m.kind,
                    file_name="x.gcode",
                    stored_name=uuid.uuid4().hex,
                    file_sha256="0" * 64,
                    file_size=1,
                    lines_total=1,
                    analysis={"estimated_time_s": rng.uniform(600, 6 * 3600)},
                    material=rng.choice(["PLA", "PETG", None])
                    if m.kind is MachineKind.FDM_PRINTER
                    else None,
                    created_at=NOW - dt.timedelta(minutes=i),
                )
            )
        for i in range(40):
            session.add(
                MaterialStock(
                    material=rng.choice(["PLA", "PETG", "ASA", "plywood", "acrylic", "MDF"]),
                    colour=rng.choice(["black", "white", "red", "natural"]),
                    amount=rng.randint(100, 1000),
                    unit="g",
                    machine_id=machines[i].id if i < 30 else None,
                )
            )
        await session.commit()
    return {"Authorization": f"Bearer {token}"}, bookings


async def _time(fn: Callable[[], Awaitable[object]], repeat: int) -> tuple[float, float]:
    await fn()  # warm up
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.95 * len(samples)))]


async def run_backend(name: str, url: str, data_dir: Path, repeat: int) -> None:
    settings = Settings(
        data_dir=data_dir,
        database_url=url,
        run_supervisors=False,
        log_json=False,
        shop_timezone="Europe/Brussels",
        network_publish=False,
    )
    migrate.upgrade(settings)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        app.state.clock = lambda: NOW
        headers, bookings = await _load(app)
        # Each timed request a new report (a new sequence and signature): the clock moves on
        # past the reuse window of an unchanged report.
        ticks = iter(range(1, 10**6))
        app.state.clock = lambda: NOW + dt.timedelta(seconds=next(ticks) * routes.REUSE_S)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

            async def signed() -> None:
                resp = await client.get("/api/v1/network/capacity?format=jws", headers=headers)
                assert resp.status_code == 200, resp.text

            async def machines() -> None:
                resp = await client.get("/api/v1/machines", headers=headers)
                assert resp.status_code == 200

            shop = identity.shop_key(settings.data_dir)

            async def content() -> None:
                async with app.state.sessionmaker() as session:
                    await report.content(session=session, settings=settings, shop=shop, now=NOW)

            full = await _time(signed, repeat)
            body = await _time(content, repeat)
            base = await _time(machines, repeat)
            async with app.state.sessionmaker() as session:
                rep = await report.issue(session=session, settings=settings, shop=shop, now=NOW)
            size = len(report.canonical(rep))
            t0 = time.perf_counter()
            for _ in range(repeat):
                report.sign(rep, shop)
            sign_ms = (time.perf_counter() - t0) * 1000 / repeat
            compute_ms = await _compute_alone(app, settings, repeat)
    print(
        f"{name}: {bookings} bookings, 300 queued jobs, report {size} bytes "
        f"({len(rep['live']['freeHours'])} freeHours rows, "
        f"{len(rep['okw']['equipment'])} equipment entries)"
    )
    print(f"  GET /api/v1/network/capacity?format=jws  p50 {full[0]:.1f} ms  p95 {full[1]:.1f} ms")
    print(f"  report content (reads + free hours)       p50 {body[0]:.1f} ms  p95 {body[1]:.1f} ms")
    print(f"  free-hours computation alone              {compute_ms:.1f} ms")
    print(f"  canonical JSON + Ed25519 signature        {sign_ms:.2f} ms")
    print(f"  baseline GET /api/v1/machines (50)        p50 {base[0]:.1f} ms  p95 {base[1]:.1f} ms")


async def _compute_alone(app: Any, settings: Settings, repeat: int) -> float:
    """Time capacity.compute on the inputs report._live gathers (captured once)."""
    captured: dict[str, Any] = {}
    original = capacity.compute

    def capture(**kwargs: Any) -> capacity.Capacity:
        captured.update(kwargs)
        return original(**kwargs)

    capacity.compute = capture  # type: ignore[assignment]
    try:
        shop = identity.shop_key(settings.data_dir)
        async with app.state.sessionmaker() as session:
            await report.content(session=session, settings=settings, shop=shop, now=NOW)
    finally:
        capacity.compute = original  # type: ignore[assignment]
    t0 = time.perf_counter()
    for _ in range(repeat):
        original(**captured)
    return (time.perf_counter() - t0) * 1000 / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    print(
        f"{dt.date.today()} · {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {platform.system()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_dir = Path(tmp) / "sqlite"
        sqlite_dir.mkdir()
        asyncio.run(
            run_backend(
                "SQLite", f"sqlite:///{sqlite_dir / 'bench.sqlite3'}", sqlite_dir, args.repeat
            )
        )
        pg = os.environ.get("MICROFACTORY_TEST_POSTGRES_URL")
        if pg:
            name = f"mf_bench_{uuid.uuid4().hex[:8]}"
            engine = create_engine(pg, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            url = pg.rsplit("/", 1)[0] + "/" + name
            try:
                pg_dir = Path(tmp) / "pg"
                pg_dir.mkdir()
                asyncio.run(run_backend("PostgreSQL", url, pg_dir, args.repeat))
            finally:
                with engine.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                engine.dispose()


if __name__ == "__main__":
    main()
