"""Usage report benchmark: a monthly per-member summary over 1,000,000 usage rows.

For SQLite and (when MICROFACTORY_TEST_POSTGRES_URL is set) PostgreSQL: migrate a fresh
database, bulk-load 1,000,000 usage records (200 members, 20 machines, 24 months), then time

1. one member's month summed per machine (the dashboard's usage page and the statement),
2. every member's month summed per member (the operators' report),

each through `microfactory.usage.reports.summary` (SQLAlchemy, the code the API runs) and as
the same aggregate in raw SQL, median of repeated runs. Goal: under 200 ms.

Run: .venv/bin/python bench/bench_usage.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text

from microfactory import migrate
from microfactory.accounts.models import Role, User
from microfactory.config import Settings
from microfactory.db import make_engine, make_sessionmaker
from microfactory.usage import reports

MEMBERS = 200
MACHINES = 20
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
MONTHS = 24
REPEAT = 15
CANDIDATE_INDEX = ""  # --index: try an index before it goes into the migration
MONTH = "2026-06"
SEED = 20261124


def _rows(n: int) -> Any:
    rng = random.Random(SEED)
    span_s = MONTHS * 30.4 * 86400
    for i in range(n):
        start = T0 + dt.timedelta(seconds=rng.random() * span_s)
        active = rng.uniform(600, 6 * 3600)
        end = start + dt.timedelta(seconds=active * 1.05)
        grams = round(rng.uniform(1, 300), 1) if i % 3 else None
        yield (
            rng.randint(1, MEMBERS),
            rng.randint(1, MACHINES),
            "job",
            start.strftime("%Y-%m-%d %H:%M:%S.%f"),
            end.strftime("%Y-%m-%d %H:%M:%S.%f"),
            active,
            "PLA" if grams else None,
            grams,
            round(active / 3600 * 120, 3),
            "finished",
            "",
            T0.strftime("%Y-%m-%d %H:%M:%S.%f"),
        )


COLUMNS = (
    "user_id, machine_id, source, started_at, ended_at, active_s, material_kind, material_g,"
    " energy_wh, outcome, note, created_at"
)


def _seed_refs(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for i in range(1, MEMBERS + 1):
            conn.execute(
                text(
                    "INSERT INTO users (id, username, full_name, role, password_hash, is_active,"
                    " trusted, created_at, updated_at) VALUES (:i, :u, '', 'member', 'x', true,"
                    " false, :t, :t)"
                ),
                {"i": i, "u": f"m{i:03d}", "t": T0},
            )
        for i in range(1, MACHINES + 1):
            conn.execute(
                text(
                    "INSERT INTO machines (id, name, kind, driver, connection, capabilities,"
                    " enabled, maintenance, notes, created_at, updated_at) VALUES (:i, :n,"
                    " 'fdm_printer', 'manual', '{}', '{}', true, false, '', :t, :t)"
                ),
                {"i": i, "n": f"Printer {i:02d}", "t": T0},
            )
    engine.dispose()


def load_sqlite(path: Path, n: int) -> None:
    """Bulk-load rows with the stdlib driver (what the app would store, as text in UTC)."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    with con:
        con.executemany(
            f"INSERT INTO usage_records ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",  # noqa: S608
            _rows(n),
        )
    con.execute("ANALYZE")
    con.close()


def load_postgres(url: str, n: int) -> None:
    """Bulk-load rows with COPY."""
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as con, con.cursor() as cur:
        with cur.copy(f"COPY usage_records ({COLUMNS}) FROM STDIN") as copy:
            for row in _rows(n):
                copy.write_row(
                    [
                        *row[:3],
                        row[3] + "+00",
                        row[4] + "+00",
                        *row[5:11],
                        row[11] + "+00",
                    ]
                )
        con.commit()
        con.autocommit = True
        cur.execute("VACUUM ANALYZE usage_records")


RAW_ONE = """
SELECT u.machine_id, m.name, count(u.id), coalesce(sum(u.active_s), 0),
       coalesce(sum(u.material_g), 0), coalesce(sum(u.energy_wh), 0)
FROM usage_records u JOIN machines m ON m.id = u.machine_id
WHERE u.user_id = :uid AND u.started_at >= :s AND u.started_at < :e
GROUP BY u.machine_id, m.name ORDER BY u.machine_id, m.name
"""
RAW_ALL = """
SELECT u.user_id, us.username, count(u.id), coalesce(sum(u.active_s), 0),
       coalesce(sum(u.material_g), 0), coalesce(sum(u.energy_wh), 0)
FROM usage_records u JOIN users us ON us.id = u.user_id
WHERE u.started_at >= :s AND u.started_at < :e
GROUP BY u.user_id, us.username ORDER BY u.user_id, us.username
"""


async def _median_ms(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    result = await fn()  # warm the cache and the statement cache
    times = []
    for _ in range(REPEAT):
        t = time.perf_counter()
        result = await fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), result


async def measure(url: str) -> dict[str, float]:
    """Time the four queries on a loaded database."""
    from zoneinfo import ZoneInfo

    settings = Settings(database_url=url, data_dir=Path(tempfile.gettempdir()))
    engine = make_engine(settings.async_database_url)
    sm = make_sessionmaker(engine)
    tz = ZoneInfo("UTC")
    start, end = reports.month_bounds(MONTH, tz)
    staff = User(id=0, username="bench", role=Role.OPERATOR)
    out: dict[str, float] = {}
    async with sm() as session:
        bind = {"uid": 42, "s": start, "e": end}
        if url.startswith("sqlite"):  # the app stores naive UTC text on SQLite
            bind = {"uid": 42, "s": start.replace(tzinfo=None), "e": end.replace(tzinfo=None)}

        async def one_orm() -> Any:
            return await reports.summary(
                session=session, user=staff, start=start, end=end, group_by="machine", user_id=42
            )

        async def one_raw() -> Any:
            return (await session.execute(text(RAW_ONE), bind)).all()

        async def all_orm() -> Any:
            return await reports.summary(
                session=session, user=staff, start=start, end=end, group_by="member"
            )

        async def all_raw() -> Any:
            return (await session.execute(text(RAW_ALL), {"s": bind["s"], "e": bind["e"]})).all()

        out["one_member_orm"], r1 = await _median_ms(one_orm)
        out["one_member_raw"], r2 = await _median_ms(one_raw)
        assert len(r1) == len(r2) > 0, (len(r1), len(r2))
        out["all_members_orm"], r3 = await _median_ms(all_orm)
        out["all_members_raw"], r4 = await _median_ms(all_raw)
        assert len(r3) == len(r4) == MEMBERS, (len(r3), len(r4))
        out["rows_in_month"] = float(sum(r["sessions"] for r in r3))
        plan = text(("EXPLAIN QUERY PLAN " if url.startswith("sqlite") else "EXPLAIN ") + RAW_ALL)
        out["plan"] = " | ".join(
            str(r[-1])
            for r in (await session.execute(plan, {"s": bind["s"], "e": bind["e"]})).all()
        )  # type: ignore[assignment]
    await engine.dispose()
    return out


def run(backend: str, rows: int) -> dict[str, Any]:
    """Migrate, load and measure one backend."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-usage-"))
    if backend == "sqlite":
        path = tmp / "usage.sqlite3"
        url = f"sqlite:///{path}"
        migrate.upgrade(Settings(database_url=url, data_dir=tmp))
        _seed_refs(url)
        t = time.perf_counter()
        load_sqlite(path, rows)
    else:
        base = os.environ["MICROFACTORY_TEST_POSTGRES_URL"]
        name = f"bench_usage_{uuid.uuid4().hex[:8]}"
        admin = create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = base.rsplit("/", 1)[0] + "/" + name
        migrate.upgrade(Settings(database_url=url))
        _seed_refs(url)
        t = time.perf_counter()
        load_postgres(url, rows)
    load_s = time.perf_counter() - t
    if CANDIDATE_INDEX:
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text(CANDIDATE_INDEX))
            conn.execute(text("ANALYZE"))
        engine.dispose()
    try:
        result = asyncio.run(measure(url))
    finally:
        if backend == "postgresql":
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    result["load_s"] = load_s
    return result


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--index", default="", help="CREATE INDEX ... to try after loading")
    parser.add_argument("--only", default="", help="sqlite or postgresql")
    args = parser.parse_args()
    global CANDIDATE_INDEX
    CANDIDATE_INDEX = args.index
    backends = ["sqlite"] + (
        ["postgresql"] if os.environ.get("MICROFACTORY_TEST_POSTGRES_URL") else []
    )
    print(f"# bench_usage: {args.rows:,} usage rows, {MEMBERS} members, {MACHINES} machines")
    print(
        f"{dt.date.today()} · nproc {os.cpu_count()} · {platform.machine()} · "
        f"Python {platform.python_version()}"
    )
    print()
    print(
        "| backend | rows in month | one member, service | one member, raw SQL |"
        " all members, service | all members, raw SQL | load |"
    )
    print("|---|---|---|---|---|---|---|")
    plans = {}
    for backend in backends:
        if args.only and backend != args.only:
            continue
        r = run(backend, args.rows)
        plans[backend] = r.pop("plan")
        print(
            f"| {backend} | {int(r['rows_in_month']):,} | {r['one_member_orm']:.1f} ms |"
            f" {r['one_member_raw']:.1f} ms | {r['all_members_orm']:.1f} ms |"
            f" {r['all_members_raw']:.1f} ms | {r['load_s']:.0f} s |",
            flush=True,
        )
    for backend, plan in plans.items():
        print(f"\n{backend} plan (all members): {plan}")


if __name__ == "__main__":
    main()
