"""Booking creation benchmark against a real uvicorn server on 127.0.0.1.

64 concurrent clients each book distinct 15-minute slots (no conflicts, every rule checked:
horizon, opening hours, maintenance, training, quotas, future-booking limit, the SQLite lock
or the PostgreSQL exclusion constraint, a confirmation in the outbox). In the same run and on
the same server, the same clients call a bare FastAPI endpoint (no auth, no database) that
echoes the same JSON body. Reported: requests/s, p50 and p99 latency, and the ratio.

Run: .venv/bin/python bench/bench_bookings.py [--bookings 2000] [--backend sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from pydantic import BaseModel
from sqlalchemy import create_engine, text

from microfactory import migrate
from microfactory.config import Settings


class Body(BaseModel):
    """The bare endpoint's body: the same fields a booking sends."""

    machine_id: int
    start: dt.datetime
    end: dt.datetime


CLIENTS = 64
MACHINES = 16
SLOT = dt.timedelta(minutes=15)


def serve(url: str, data_dir: str, port: int) -> None:
    """Run the app plus a bare endpoint under uvicorn (the child process)."""
    import uvicorn
    from fastapi import FastAPI

    from microfactory.app import create_app

    settings = Settings(
        database_url=url,
        data_dir=Path(data_dir),
        log_json=False,
        log_level="WARNING",
        run_supervisors=False,
    )
    app: FastAPI = create_app(settings)

    @app.post("/bench/bare")
    async def bare(body: Body) -> Body:
        """Echo the body: FastAPI's own cost (validation and JSON) without our rules."""
        return body

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare(url: str, data_dir: Path) -> None:
    migrate.upgrade(Settings(database_url=url, data_dir=data_dir))
    engine = create_engine(url)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        for i in range(1, MACHINES + 1):
            conn.execute(
                text(
                    "INSERT INTO machines (id, name, kind, driver, connection, capabilities,"
                    " enabled, maintenance, notes, created_at, updated_at) VALUES (:i, :n,"
                    " 'fdm_printer', 'manual', '{}', '{}', true, false, '', :t, :t)"
                ),
                {"i": i, "n": f"Printer {i:02d}", "t": now},
            )
        # No limit on upcoming bookings: each client books many slots in the run.
        conn.execute(
            text(
                "INSERT INTO booking_policy (id, horizon_days, cancel_cutoff_minutes,"
                " checkin_grace_minutes, max_future_bookings, reminder_minutes, noshow_limit,"
                " noshow_window_days, suspension_days) VALUES (1, 14, 120, 15, 1000000, 60, 3,"
                " 30, 14)"
            )
        )
    engine.dispose()


async def _tokens(base: str) -> list[str]:
    """Create the admin by CLI-equivalent service calls, then members by the API."""
    from microfactory.accounts import service as account_service
    from microfactory.accounts.models import Role, TokenKind
    from microfactory.accounts.schemas import UserCreate
    from microfactory.db import make_engine, make_sessionmaker

    out = []
    engine = make_engine(SETTINGS.async_database_url)
    sm = make_sessionmaker(engine)
    async with sm() as session:
        for i in range(CLIENTS):
            user = await account_service.create(
                session=session,
                user_in=UserCreate(
                    username=f"bench{i:02d}", password="bench-pass-1", role=Role.MEMBER
                ),
            )
            token, _ = await account_service.issue_token(
                session=session, user=user, kind=TokenKind.PERSONAL
            )
            out.append(token)
        await session.commit()
    await engine.dispose()
    return out


async def _load(
    base: str, tokens: list[str], total: int, bare: bool
) -> tuple[float, list[float], dict[int, int]]:
    start0 = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).replace(
        minute=0, second=0, microsecond=0
    )
    counter = iter(range(total))
    latencies: list[float] = []
    codes: dict[int, int] = {}
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)

    async def client(i: int, http: httpx.AsyncClient) -> None:
        headers = {"Authorization": f"Bearer {tokens[i]}"}
        for n in counter:
            machine = n % MACHINES + 1
            start = start0 + SLOT * (n // MACHINES)
            body = {
                "machine_id": machine,
                "start": start.isoformat(),
                "end": (start + SLOT).isoformat(),
            }
            t = time.perf_counter()
            resp = await http.post(
                "/bench/bare" if bare else "/api/v1/bookings", json=body, headers=headers
            )
            latencies.append(time.perf_counter() - t)
            codes[resp.status_code] = codes.get(resp.status_code, 0) + 1

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:
        # Warm up the connection pool (and the tokens' first-use write) before timing.
        await asyncio.gather(
            *(
                http.get("/api/v1/users/me", headers={"Authorization": f"Bearer {t}"})
                for t in tokens
            )
        )
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(CLIENTS)))
        elapsed = time.perf_counter() - t0
    return elapsed, latencies, codes


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


SETTINGS: Settings


def main() -> None:
    """Run the benchmark on one backend and print a Markdown table row pair."""
    global SETTINGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--bookings", type=int, default=2000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--serve", nargs=3, metavar=("URL", "DATA_DIR", "PORT"))
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1], int(args.serve[2]))
        return
    # 14 days x 96 slots x 16 machines = 21,504 distinct slots available.
    assert args.bookings <= 14 * 96 * MACHINES - 8 * 4 * MACHINES
    data_dir = Path(tempfile.mkdtemp(prefix="bench-bookings-"))
    admin_engine = None
    if args.backend == "sqlite":
        url = f"sqlite:///{data_dir / 'bench.sqlite3'}"
    else:
        base_url = os.environ["MICROFACTORY_TEST_POSTGRES_URL"]
        name = f"bench_bookings_{uuid.uuid4().hex[:8]}"
        admin_engine = create_engine(base_url, isolation_level="AUTOCOMMIT")
        with admin_engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = base_url.rsplit("/", 1)[0] + "/" + name
    SETTINGS = Settings(database_url=url, data_dir=data_dir)
    _prepare(url, data_dir)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFACTORY_")}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", url, str(data_dir), str(port)], env=env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.2)
        tokens = asyncio.run(_tokens(base))
        results: dict[str, Any] = {}
        for label, bare in (("bare FastAPI endpoint", True), ("POST /api/v1/bookings", False)):
            elapsed, lat, codes = asyncio.run(_load(base, tokens, args.bookings, bare))
            results[label] = (args.bookings / elapsed, _pct(lat, 50), _pct(lat, 99), codes)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        if admin_engine is not None:
            with admin_engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin_engine.dispose()
    print(
        f"# bench_bookings ({args.backend}): {args.bookings} requests, {CLIENTS} clients, "
        f"{dt.date.today()} · nproc {os.cpu_count()} · {platform.machine()} · "
        f"Python {platform.python_version()}"
    )
    print("| endpoint | requests/s | p50 | p99 | status codes |")
    print("|---|---|---|---|---|")
    for label, (rps, p50, p99, codes) in results.items():
        print(f"| {label} | {rps:.0f} | {p50:.1f} ms | {p99:.1f} ms | {codes} |")
    bare_rps = results["bare FastAPI endpoint"][0]
    book_rps = results["POST /api/v1/bookings"][0]
    print(f"\nbookings/s as a share of the bare endpoint: {book_rps / bare_rps:.2%}")


if __name__ == "__main__":
    main()
