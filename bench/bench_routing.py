"""Routing benchmark: 100,000 synthetic shops, "FDM, PETG, 200 mm, within 150 km, soonest".

Seeds the hub's derived index (hub_shop_index + hub_offers, as `index_report` writes them)
with N shops spread uniformly over a box the size of Europe (lat 36-60, lon -10-30, ~7.9
million km², so ~900 shops within 150 km of a point), each with 1-3 machine models (small
and large FDM printers, a laser, a CNC router) and 1-3 materials each. Then times
`routing.route` (the whole answer: shops ranked, excluded with reasons) at random points:

- in memory: as shipped, the process's grid copy of the index (`memindex`), after its load
  (timed apart), each query still checking the index's version in the database;
- indexed SQL: `route(in_memory=False)` (PostgreSQL: cube/earthdistance GiST; SQLite: lat/lon
  box prefilter);
- scan: the SQL path with the spatial prefilter replaced by a plain haversine predicate in
  SQL over every row (PostgreSQL only: SQLite has no trigonometric functions built in).
Beside the wall-clock times it gives the CPU time of this process per query
(`time.process_time`): on a machine shared with other work, what the query itself costs
here, without the database server's part or the waits for a core.
It also counts the queries whose in-memory answer differs from the indexed SQL one (on
PostgreSQL the SQL path's excluded list reads at most 300 shops nearest first, so it can
differ where more than 300 shops in the radius fit; the in-memory path reads them all).

Run: .venv/bin/python bench/bench_routing.py [--shops 100000] [--queries 300]
     [--backend postgresql|sqlite|both]
PostgreSQL: a throwaway database on MICROFACTORY_TEST_POSTGRES_URL, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, func, insert, text

from microfactory import migrate
from microfactory.config import Settings
from microfactory.db import make_engine, make_sessionmaker
from microfactory.network.hub import routing
from microfactory.network.hub.models import HubOffer, HubShopIndex
from microfactory.network.hub.requirements import Requirements

BOX = (36.0, 60.0, -10.0, 30.0)
MODELS = [
    ("fdm_printing", "Prusa MK4", (250, 220, 210), 0.4, None, ["PLA", "PETG", "ABS"]),
    ("fdm_printing", "Prusa XL", (360, 360, 360), 0.4, None, ["PLA", "PETG"]),
    ("fdm_printing", "Prusa MINI", (180, 180, 180), 0.4, None, ["PLA", "PETG"]),
    ("laser_cutting", "Trotec Speedy 300", (726, 432, 0), None, 60.0, ["plywood", "acrylic"]),
    ("cnc_milling", "Shapeoko 4", (838, 838, 95), None, None, ["wood", "aluminium"]),
]


def seed_rows(n: int, now: dt.datetime, rng: random.Random) -> tuple[list[dict], list[dict]]:
    shops, offers = [], []
    today = now.date().isoformat()
    for i in range(n):
        shop_id = f"shop{i:06d}".ljust(43, "x")
        lat = rng.uniform(BOX[0], BOX[1])
        lon = rng.uniform(BOX[2], BOX[3])
        expires = now + dt.timedelta(minutes=rng.choice([-5, 5, 10, 15, 15, 15]))
        shops.append(
            {
                "shop_id": shop_id, "report_cursor": i + 1, "sequence": 1, "name": f"Shop {i}",
                "url": "", "city": "", "country": "", "lat": lat, "lon": lon,
                "issued_at": now, "expires_at": expires, "processes": [], "materials": [],
                "summary": {},
            }
        )  # fmt: skip
        for process, machine, dims, nozzle, power, materials in rng.sample(
            MODELS, rng.randint(1, 3)
        ):
            wait = rng.choice([0.0, 0.0, 1.5, 4.0, 12.0, 30.0])
            for material in rng.sample(materials, rng.randint(1, len(materials))):
                hours = [rng.choice([0, 0, 4, 8, 16]) for _ in range(7)]
                offers.append(
                    {
                        "shop_id": shop_id, "shop_name": f"Shop {i}", "process": process,
                        "material": material.lower(),
                        "machine": machine, "quantity": rng.randint(1, 4),
                        "dim_a": dims[0], "dim_b": dims[1], "dim_c": dims[2],
                        "nozzle_mm": nozzle, "laser_w": power, "lat": lat, "lon": lon,
                        "expires_at": expires, "wait_h": wait, "on_hand": None,
                        "free_from": today, "free_hours": ",".join(str(h) for h in hours),
                        "timezone": "Europe/Brussels",
                    }
                )  # fmt: skip
    return shops, offers


def seed(url: str, n: int, now: dt.datetime) -> int:
    shops, offers = seed_rows(n, now, random.Random(12))
    engine = create_engine(url)
    with engine.begin() as conn:
        for table, rows in ((HubShopIndex.__table__, shops), (HubOffer.__table__, offers)):
            for start in range(0, len(rows), 5000):
                conn.execute(insert(table), rows[start : start + 5000])
        conn.execute(text("ANALYZE"))
    engine.dispose()
    return len(offers)


def haversine_scan(model: Any, dialect: str, lat: float, lon: float, radius_km: float) -> Any:
    """A plain great-circle predicate over every row (no index can serve it)."""
    p1, l1 = math.radians(lat), math.radians(lon)
    p2, l2 = func.radians(model.lat), func.radians(model.lon)
    h = func.power(func.sin((p2 - p1) / 2), 2) + math.cos(p1) * func.cos(p2) * func.power(
        func.sin((l2 - l1) / 2), 2
    )
    return 2 * routing.EARTH_KM * func.asin(func.sqrt(h)) <= radius_km


def _request(lat: float, lon: float) -> Requirements:
    return Requirements(
        processes=("fdm_printing",), material="PETG", size=(200.0, 200.0, 200.0),
        quantity=1, deadline=None, lat=lat, lon=lon, radius_km=150.0,
    )  # fmt: skip


async def time_queries(
    url: str, points: list[tuple[float, float]], now: dt.datetime, *, in_memory: bool
) -> dict:
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    reqs = [_request(lat, lon) for lat, lon in points]
    t0 = time.perf_counter()
    async with sessions() as session:  # the in-memory copy loads here
        await routing.route(session=session, req=reqs[0], now=now, in_memory=in_memory)
    load_s = time.perf_counter() - t0
    async with sessions() as session:  # warm the caches
        for req in reqs[:20]:
            await routing.route(session=session, req=req, now=now, in_memory=in_memory)
    times, cpu, fitted, excluded, answers = [], [], [], [], []
    for req in reqs:
        async with sessions() as session:
            t0, c0 = time.perf_counter(), time.process_time()
            answer = await routing.route(session=session, req=req, now=now, in_memory=in_memory)
            times.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
        fitted.append(len(answer.shops))
        excluded.append(len(answer.excluded))
        answers.append(answer.model_dump())
    await engine.dispose()
    times.sort()
    cpu.sort()
    return {
        "p50_ms": statistics.median(times),
        "cpu_p50_ms": statistics.median(cpu),
        "cpu_p99_ms": cpu[min(len(cpu) - 1, int(len(cpu) * 0.99))],
        "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))],
        "mean_shops": statistics.mean(fitted),
        "mean_excluded": statistics.mean(excluded),
        "first_query_s": load_s,
        "answers": answers,
        "load": os.getloadavg()[0],
    }


async def run_backend(backend: str, shops: int, queries: int) -> list[tuple[str, dict]]:
    now = dt.datetime.now(dt.UTC)
    rng = random.Random(7)
    # Keep the points 150 km inside the box, as a member inside the served area would be.
    points = [(rng.uniform(38, 58), rng.uniform(-7, 27)) for _ in range(queries)]
    results = []
    if backend == "postgresql":
        base = os.environ.get("MICROFACTORY_TEST_POSTGRES_URL")
        if not base:
            raise SystemExit("set MICROFACTORY_TEST_POSTGRES_URL to a PostgreSQL server")
        name = f"mf_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = base.rsplit("/", 1)[0] + "/" + name
        try:
            migrate.upgrade(Settings(database_url=url))
            t0 = time.perf_counter()
            n_offers = seed(url, shops, now)
            print(
                f"postgresql: seeded {shops} shops, {n_offers} offers "
                f"in {time.perf_counter() - t0:.0f} s"
            )
            memory = await time_queries(url, points, now, in_memory=True)
            results.append(("postgresql, in-memory grid (as shipped)", memory))
            indexed = await time_queries(url, points, now, in_memory=False)
            results.append(("postgresql, GiST (cube/earthdistance)", indexed))
            indexed_near = routing._near
            routing._near = haversine_scan  # type: ignore[assignment]
            try:
                results.append(
                    (
                        "postgresql, plain haversine scan",
                        await time_queries(url, points, now, in_memory=False),
                    )
                )
            finally:
                routing._near = indexed_near
            _same(memory, indexed)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/bench.sqlite3"
            migrate.upgrade(Settings(data_dir=Path(tmp), database_url=url))
            t0 = time.perf_counter()
            n_offers = seed(url, shops, now)
            print(
                f"sqlite: seeded {shops} shops, {n_offers} offers "
                f"in {time.perf_counter() - t0:.0f} s"
            )
            aurl = "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
            memory = await time_queries(aurl, points, now, in_memory=True)
            results.append(("sqlite, in-memory grid (as shipped)", memory))
            indexed = await time_queries(aurl, points, now, in_memory=False)
            results.append(("sqlite, lat/lon box prefilter", indexed))
            _same(memory, indexed)
    return results


def _same(memory: dict, indexed: dict) -> None:
    differ = sum(a != b for a, b in zip(memory["answers"], indexed["answers"], strict=True))
    print(f"answers: {len(memory['answers']) - differ} of {len(memory['answers'])} identical "
          "(in memory vs indexed SQL)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shops", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--backend", choices=["postgresql", "sqlite", "both"], default="both")
    args = parser.parse_args()
    print(f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    backends = ["postgresql", "sqlite"] if args.backend == "both" else [args.backend]
    for backend in backends:
        for label, r in asyncio.run(run_backend(backend, args.shops, args.queries)):
            print(
                f"{label:42s} p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                f"(CPU here: p50 {r['cpu_p50_ms']:.2f} ms, p99 {r['cpu_p99_ms']:.2f} ms)  "
                f"shops/answer {r['mean_shops']:.0f}  excluded/answer {r['mean_excluded']:.0f}  "
                f"first query {r['first_query_s']:.1f} s  load {r['load']:.1f}"
            )


if __name__ == "__main__":
    main()
