"""Report ingest on a hub: verify and store signed capacity reports, reports per second.

N reports from S shops (each a realistic report: 4 machine models, 2-3 materials each, a
week of free hours, ~6 KB of JWS), signed beforehand in the contract's exact form (RFC 8785
payload, joserfc, header {"alg": "Ed25519", "kid"}). Timed, in the same run:

- verify only: `verify.verify` (parse, canonical form, thumbprint, Ed25519 signature), no
  database: the ceiling;
- service: `service.ingest` (verify, pin, times, sequence, store as received, rebuild the
  shop's index rows), one transaction per report, as each push is;
- HTTP: `POST /api/v1/network/reports` through the whole app in process (httpx's ASGI
  transport: routing, middleware, the session dependency), one request at a time;
- mirror pages: `service.ingest_many` on pages of 500 reports, one transaction a page (the
  same checks, report by report);
- mirror pages, pipelined: the same pages through `pipeline.PageIngest`, as a hub mirroring
  an upstream takes them: page k+1 checked in a worker process while page k is stored.

Each mode also gives reports per CPU second of this process (`time.process_time`, all its
threads: SQLite's work included, PostgreSQL's server not): on a shared machine, what the
work costs here without the waits for a core.

Run: .venv/bin/python bench/bench_ingest.py [--reports 3000] [--shops 100]
     [--backend sqlite|postgresql|both] [--baseline DIR]
`--baseline DIR` first runs DIR's own copy of this bench (another checkout, e.g. the code at
main: `git worktree add --detach /tmp/ingest-base main`) with the same arguments, in the same
run, its lines marked "baseline". Concurrent pushes through real HTTP: bench_ingest_http.py.
PostgreSQL: a throwaway database on MICROFACTORY_TEST_POSTGRES_URL, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from sqlalchemy import create_engine, text

from microfactory import migrate
from microfactory.app import create_app
from microfactory.config import Settings
from microfactory.network.hub import service, verify

try:  # a baseline checkout may predate the pipeline
    from microfactory.network.hub import pipeline
except ImportError:
    pipeline = None  # type: ignore[assignment]
from tests.network.hub.conftest import Shop, fdm, laser


def make_reports(n: int, shops: int, parts: int = 3) -> list[list[str]]:
    """Return `n` signed reports in `parts` batches, each batch's sequences after the last's."""
    now = dt.datetime.now(dt.UTC)
    makers = [
        Shop(
            f"Shop {i}",
            lat=50 + i / 100,
            lon=4 + i / 100,
            equipment=[
                fdm("MK4", 250, 210, 220, ["PLA", "PETG", "ABS"], quantity=4),
                fdm("XL", 360, 360, 360, ["PLA", "PETG"]),
                fdm("MINI", 180, 180, 180, ["PLA", "TPU"], quantity=2),
                laser("Speedy 300", 726, 432, ["plywood", "acrylic", "MDF"]),
            ],
        )
        for i in range(shops)
    ]
    tokens = [m.jws(now=now) for _ in range(n // shops) for m in makers]
    size = len(tokens) // parts
    return [tokens[k * size : (k + 1) * size] for k in range(parts)]


def settings_for(url: str, tmp: str) -> Settings:
    return Settings(
        data_dir=Path(tmp),
        database_url=url,
        run_supervisors=False,
        log_json=False,
        log_level="WARNING",
        hub=True,
        hub_open=True,
        max_body_bytes=256 * 1024,
    )


class Clock:
    """Wall-clock and CPU time (this process's, all threads) of one mode."""

    def __enter__(self) -> Clock:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0

    def rates(self, n: int) -> tuple[float, float]:
        return n / self.wall, n / max(self.cpu, 1e-9)


async def run(url: str, tmp: str, batches: list[list[str]]) -> dict[str, tuple[float, float]]:
    settings = settings_for(url, tmp)
    app = create_app(settings)
    results = {}
    with Clock() as clock:
        for token in batches[0]:
            verify.verify(token)
    results["verify only"] = clock.rates(len(batches[0]))
    async with app.router.lifespan_context(app):
        sessions = app.state.sessionmaker
        with Clock() as clock:
            for token in batches[0]:
                async with sessions() as session, session.begin():
                    await service.ingest(
                        session=session, token=token, settings=settings, now=dt.datetime.now(dt.UTC)
                    )
        results["service.ingest"] = clock.rates(len(batches[0]))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
            headers = {"Content-Type": "application/jose"}
            with Clock() as clock:
                for token in batches[1]:
                    resp = await client.post(
                        "/api/v1/network/reports", content=token, headers=headers
                    )
                    assert resp.status_code == 202, resp.text
            results["POST /reports (ASGI)"] = clock.rates(len(batches[1]))
        with Clock() as clock:
            for start in range(0, len(batches[2]), 500):
                async with sessions() as session, session.begin():
                    outcomes = await service.ingest_many(
                        session=session,
                        tokens=batches[2][start : start + 500],
                        settings=settings,
                        now=dt.datetime.now(dt.UTC),
                        source="http://upstream",
                    )
                assert all(isinstance(o, service.IngestResult) for o in outcomes)
        results["mirror pages of 500"] = clock.rates(len(batches[2]))
    if pipeline is None:
        return results
    # The same pages again, as `mirror.pull_one` takes them: page k+1 checked in a worker
    # process (spawned and warmed before the clock starts) while page k is stored; the fourth
    # batch, whose sequences are new. The worker's CPU is not counted as this process's.
    return results | await run_pipelined(url, tmp, batches)


async def run_pipelined(
    url: str, tmp: str, batches: list[list[str]]
) -> dict[str, tuple[float, float]]:
    assert pipeline is not None
    settings = settings_for(url, tmp)
    app = create_app(settings)
    tokens = batches[3]
    async with app.router.lifespan_context(app):
        sessions = app.state.sessionmaker
        now = dt.datetime.now(dt.UTC)
        await pipeline.check_page(tokens[:1], settings=settings, now=now, source="warm-up")
        pages = pipeline.PageIngest(sessions, settings, source="http://upstream")
        outcomes = []
        with Clock() as clock:
            for start in range(0, len(tokens), 500):
                outcomes += await pages.feed(tokens[start : start + 500]) or []
            outcomes += await pages.finish() or []
        assert len(outcomes) == len(tokens)
        assert all(isinstance(o, service.IngestResult) for o in outcomes), outcomes[:3]
    return {"mirror pages, pipelined": clock.rates(len(tokens))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=3000)
    parser.add_argument("--shops", type=int, default=100)
    parser.add_argument("--backend", choices=["postgresql", "sqlite", "both"], default="both")
    parser.add_argument("--baseline", type=Path, help="another checkout, its bench run first")
    args = parser.parse_args()
    if args.baseline:
        script = args.baseline.resolve() / "bench" / "bench_ingest.py"
        same = ["--reports", str(args.reports), "--shops", str(args.shops)]
        done = subprocess.run(
            [sys.executable, str(script), *same, "--backend", args.backend],
            cwd=args.baseline, capture_output=True, text=True, check=True,
        )  # fmt: skip
        for line in done.stdout.splitlines()[2:]:
            print(f"baseline {line}", flush=True)
    print(f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    # A fourth batch, of new sequences, for the pipelined mode (same shops, same sizes).
    parts = 3 if pipeline is None else 4
    batches = make_reports(args.reports // 3 * parts, args.shops, parts)
    size = sum(len(t) for t in batches[0]) / len(batches[0])
    print(f"{sum(map(len, batches))} reports from {args.shops} shops, {size / 1024:.1f} KB each, "
          f"{len(batches[0])} per mode")  # fmt: skip
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    for backend in backends:
        with tempfile.TemporaryDirectory() as tmp:
            if backend == "sqlite":
                url = f"sqlite:///{tmp}/bench.sqlite3"
                migrate.upgrade(Settings(data_dir=Path(tmp), database_url=url))
                results = asyncio.run(run(url, tmp, batches))
            else:
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
                    results = asyncio.run(run(url, tmp, batches))
                finally:
                    with admin.connect() as conn:
                        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                    admin.dispose()
        for label, (rate, cpu_rate) in results.items():
            print(
                f"{backend:10s} {label:24s} {rate:8.0f} reports/s  "
                f"(per CPU second here: {cpu_rate:6.0f})  load {os.getloadavg()[0]:.1f}"
            )


if __name__ == "__main__":
    main()
