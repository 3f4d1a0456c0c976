"""Report ingest through real HTTP: `microfactory serve` and concurrent clients pushing.

For each code tree (this checkout and, with `--baseline DIR`, another one measured in the
same run, e.g. the code at main: `git worktree add --detach /tmp/ingest-base main`) and each
backend: a fresh database, `python -m microfactory.cli serve` started from that tree (one
uvicorn process, an open hub), then `--clients` httpx clients, each pushing its own shops'
reports one request at a time, so that that many pushes are in flight. Every report is
signed beforehand (the contract's form, ~8 KB); a first round (each shop's first report,
which pins it) is pushed untimed, the rest timed. Every answer must be 202.

Reported per tree and backend: reports/s wall-clock; per CPU second of the server process
(utime + stime from /proc, all its threads; PostgreSQL's own processes not counted); and
per CPU second of server and clients together. The clients run on the same cores as the
server, so on a shared machine the wall-clock figure is pessimistic; the load (`uptime`)
is printed with each line.

Run: .venv/bin/python bench/bench_ingest_http.py [--baseline /tmp/ingest-base]
     [--clients 16] [--shops 64] [--rounds 8] [--backend sqlite|postgresql|both]
PostgreSQL: a throwaway database on MICROFACTORY_TEST_POSTGRES_URL, dropped afterwards.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from bench_ingest import make_reports
from sqlalchemy import create_engine, text

TICK = os.sysconf("SC_CLK_TCK")
JOSE = {"Content-Type": "application/jose"}


def cpu_s(pid: int) -> float:
    """Return a process's user + system CPU seconds (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(
    tree: Path, url: str, data_dir: str, port: int, extra: dict[str, str]
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "MICROFACTORY_DATA_DIR": data_dir,
        "MICROFACTORY_DATABASE_URL": url,
        "MICROFACTORY_HUB": "true",
        "MICROFACTORY_HUB_OPEN": "true",
        "MICROFACTORY_RUN_SUPERVISORS": "false",
        "MICROFACTORY_LOG_LEVEL": "WARNING",
        "MICROFACTORY_LOG_JSON": "false",
        "MICROFACTORY_MAX_BODY_BYTES": str(256 * 1024),
        **extra,
    }
    cmd = [sys.executable, "-m", "microfactory.cli", "serve", "--host", "127.0.0.1"]
    return subprocess.Popen([*cmd, "--port", str(port)], cwd=tree, env=env)


async def wait_ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with {proc.returncode}")
            try:
                if (await client.get(f"{base}/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("the server did not start in 120 s")


async def push_all(base: str, per_client: list[list[str]]) -> None:
    limits = httpx.Limits(
        max_connections=len(per_client), max_keepalive_connections=len(per_client)
    )
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:

        async def one(tokens: list[str]) -> None:
            for token in tokens:
                resp = await client.post("/api/v1/network/reports", content=token, headers=JOSE)
                assert resp.status_code == 202, resp.text

        await asyncio.gather(*(one(t) for t in per_client))


def split(tokens: list[str], shops: int, clients: int, rounds: range) -> list[list[str]]:
    """Give each client its shops' reports of these rounds, in sequence order per shop."""
    out: list[list[str]] = [[] for _ in range(clients)]
    for r in rounds:
        for i in range(shops):
            out[i % clients].append(tokens[r * shops + i])
    return out


def measure(
    tree: Path, url: str, tmp: str, tokens: list[str], args: argparse.Namespace,
    extra: dict[str, str],
) -> tuple[float, float, float]:  # fmt: skip
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(tree, url, tmp, port, extra)
    try:
        asyncio.run(wait_ready(base, proc))
        asyncio.run(push_all(base, split(tokens, args.shops, args.clients, range(1))))
        timed = split(tokens, args.shops, args.clients, range(1, args.rounds))
        n = sum(map(len, timed))
        s0, c0, t0 = cpu_s(proc.pid), time.process_time(), time.perf_counter()
        asyncio.run(push_all(base, timed))
        wall = time.perf_counter() - t0
        server, client = cpu_s(proc.pid) - s0, time.process_time() - c0
    finally:
        proc.terminate()
        proc.wait(30)
    return n / wall, n / max(server, 1e-9), n / max(server + client, 1e-9)


def database(backend: str, tmp: str) -> tuple[str, str | None]:
    if backend == "sqlite":
        return f"sqlite:///{tmp}/bench.sqlite3", None
    pg = os.environ.get("MICROFACTORY_TEST_POSTGRES_URL")
    if not pg:
        raise SystemExit("set MICROFACTORY_TEST_POSTGRES_URL to a PostgreSQL server")
    name = f"mf_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return pg.rsplit("/", 1)[0] + "/" + name, name


def drop(name: str) -> None:
    admin = create_engine(
        os.environ["MICROFACTORY_TEST_POSTGRES_URL"], isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout, measured first")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--shops", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8, help="reports per shop (first untimed)")
    parser.add_argument("--backend", choices=["postgresql", "sqlite", "both"], default="both")
    parser.add_argument(
        "--no-batch", action="store_true", help="also this tree without group commit"
    )
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    print(f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    tokens = make_reports(args.shops * args.rounds, args.shops, parts=1)[0]
    print(f"{len(tokens)} reports from {args.shops} shops, {args.clients} clients, "
          f"{args.shops * (args.rounds - 1)} timed per line")  # fmt: skip
    runs: list[tuple[str, Path, dict[str, str]]] = []
    if args.baseline:
        runs.append((f"baseline {args.baseline.name}", args.baseline.resolve(), {}))
    if args.no_batch:
        runs.append(
            ("this tree, no group commit", here, {"MICROFACTORY_HUB_INGEST_BATCH": "false"})
        )
    runs.append(("this tree", here, {}))
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    for backend in backends:
        for label, tree, extra in runs:
            with tempfile.TemporaryDirectory() as tmp:
                url, name = database(backend, tmp)
                try:
                    wall, server, both = measure(tree, url, tmp, tokens, args, extra)
                finally:
                    if name:
                        drop(name)
            print(f"{backend:10s} {label:30s} {wall:7.0f} reports/s  (per server CPU second: "
                  f"{server:6.0f}, server + clients: {both:6.0f})  "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
