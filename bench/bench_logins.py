"""Login flood benchmark: /healthz latency and a streaming job while 16 clients guess passwords.

A real `microfactory serve` process (uvicorn, SQLite) streams a job to a `sim-grbl` machine
(its simulator in its own process, at an emulated 115200 baud) while 16 concurrent clients
send wrong passwords to `POST /api/v1/auth/token` as fast as they are answered. We measure
the stream's lines/s and the latency of `GET /healthz` (polled 10 times a second), in:

- idle: no logins (the baseline, same run);
- flood, default throttle: the address is locked out after 20 failures, then answered 429;
- flood, throttle off (limits raised to 10^9): every guess costs an argon2 verification, so
  this shows the hashing pool on its own;
- optionally the same flood against another checkout (`--baseline-src /path/to/old/tree`),
  e.g. one that hashes on the event loop.

Goal (issue 10): /healthz p99 under 100 ms and the stream at least 95 % of idle.

The job starts after the flood has run for `--warmup` seconds (its steady state: with the
throttle, the address is locked out by then), and /healthz is polled from the start.

Run: .venv/bin/python bench/bench_logins.py [--lines 12000] [--warmup 15] [--baseline-src PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def program(lines: int) -> bytes:
    out = ["G21", "G90", "G1 F2000"]
    for i in range(lines - 3):
        out.append(f"G1 X{(i % 50) * 0.2:.1f} Y{(i % 7) * 0.3:.1f}")
    return ("\n".join(out) + "\n").encode()


def env_for(data: Path, src: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFACTORY_")}
    env.update(
        MICROFACTORY_DATA_DIR=str(data),
        MICROFACTORY_LOG_LEVEL="WARNING",
        MICROFACTORY_AUTO_DISPATCH="false",
        PYTHONPATH=str(src),
        **extra,
    )
    return env


def cli(env: dict[str, str], src: Path, *args: str, stdin: str = "") -> str:
    out = subprocess.run(
        [sys.executable, "-m", "microfactory.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=src,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def poll_health(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=60) as c:
        while not stop.is_set():
            t = time.perf_counter()
            c.get("/healthz").raise_for_status()
            out.append((time.perf_counter() - t) * 1000)
            time.sleep(0.1)


async def flood(url: str, stop: threading.Event, statuses: Counter[int]) -> None:
    async def one(n: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            while not stop.is_set():
                resp = await c.post(
                    "/api/v1/auth/token",
                    data={"username": f"guess{n}", "password": "wrong-password-123"},
                )
                statuses[resp.status_code] += 1

    await asyncio.gather(*(one(n) for n in range(CLIENTS)))


def scenario(
    name: str,
    src: Path,
    lines: int,
    with_flood: bool,
    extra: dict[str, str],
    warmup_s: float = 15.0,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        env = env_for(data, src, extra)
        cli(env, src, "db", "upgrade")
        cli(env, src, "user", "create", "--username", "op", "--role", "operator",
            "--password-stdin", stdin="operator-pass-1\n")  # fmt: skip
        token = cli(env, src, "token", "create", "--username", "op")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "microfactory.cli", "serve", "--port", str(port)],
            env=env,
            cwd=src,
            stdout=subprocess.DEVNULL,
            stderr=(Path(tmp) / "server.log").open("w"),
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start")
                time.sleep(0.2)
            client = httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
            )
            machine = client.post(
                "/api/v1/machines",
                json={
                    "name": "Mill",
                    "kind": "cnc_mill",
                    "driver": "sim-grbl",
                    "connection": {"speed_factor": 1000, "baud": 115200, "isolation": "process"},
                },
            ).json()
            while (
                client.get(f"/api/v1/machines/{machine['id']}").json()["status"]["state"] != "idle"
            ):
                time.sleep(0.2)
            job = client.post(
                "/api/v1/jobs",
                files={"file": ("p.nc", program(lines), "text/plain")},
                data={"machine_id": str(machine["id"])},
            ).json()
            latencies: list[float] = []
            statuses: Counter[int] = Counter()
            stop = threading.Event()
            poller = threading.Thread(target=poll_health, args=(url, stop, latencies))
            flooder = threading.Thread(
                target=lambda: asyncio.run(flood(url, stop, statuses)) if with_flood else None
            )
            poller.start()
            flooder.start()
            time.sleep(warmup_s if with_flood else 1.0)  # let the flood reach its steady state
            client.post(f"/api/v1/jobs/{job['id']}/dispatch").raise_for_status()
            while True:
                j: dict[str, Any] = client.get(f"/api/v1/jobs/{job['id']}").json()
                if j["state"] in ("finished", "failed", "cancelled"):
                    break
                time.sleep(0.3)
            stop.set()
            poller.join()
            flooder.join()
            if j["state"] != "finished":
                raise RuntimeError(f"job {j['state']}: {j['failure_reason']}")
            seconds = (
                dt.datetime.fromisoformat(j["ended_at"])
                - dt.datetime.fromisoformat(j["started_at"])
            ).total_seconds()
        finally:
            proc.terminate()
            proc.wait(30)
    q = statistics.quantiles(latencies, n=100)
    return {
        "name": name,
        "lines_s": j["lines_total"] / seconds,
        "p50": q[49],
        "p99": q[98],
        "max": max(latencies),
        "n": len(latencies),
        "statuses": dict(statuses),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=12000)
    ap.add_argument("--baseline-src", type=Path, default=None)
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds of flood before the job")
    opts = ap.parse_args()
    off = {
        "MICROFACTORY_LOGIN_MAX_FAILURES_PER_USERNAME": "1000000000",
        "MICROFACTORY_LOGIN_MAX_FAILURES_PER_ADDRESS": "1000000000",
    }
    print(
        f"date: {time.strftime('%Y-%m-%d')}  machine: {os.cpu_count()} cores "
        f"{platform.machine()}, python {platform.python_version()}; {CLIENTS} clients, "
        f"{opts.lines} lines to sim-grbl at emulated 115200 baud, after {opts.warmup:g} s "
        "of flood",
        flush=True,
    )
    runs: list[tuple[str, Path, bool, dict[str, str]]] = [
        ("idle", ROOT, False, {}),
        ("flood, default throttle", ROOT, True, {}),
        ("flood, throttle off", ROOT, True, off),
    ]
    if opts.baseline_src:
        runs.append((f"flood, {opts.baseline_src}", opts.baseline_src, True, {}))
    idle = 0.0
    for name, src, with_flood, extra in runs:
        r = scenario(name, src, opts.lines, with_flood, extra, opts.warmup)
        idle = idle or r["lines_s"]
        print(
            f"{r['name']:<28} stream {r['lines_s']:6.0f} lines/s "
            f"({r['lines_s'] / idle * 100:5.1f} % of idle)  /healthz p50 {r['p50']:7.1f} ms  "
            f"p99 {r['p99']:7.1f} ms  max {r['max']:7.1f} ms  ({r['n']} polls)  "
            f"logins answered: {r['statuses']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
