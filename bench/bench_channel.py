"""Benchmark: machine commands through PostgreSQL LISTEN/NOTIFY, against one process.

Two measurements, both on a real PostgreSQL and real `microfactory` processes on loopback:

1. **Command round trip.** `POST /api/v1/machines/{id}/commands` with `M105` to a sim-marlin
   printer (speed factor 0, so the simulator answers at once), p50 and p99 over many
   requests: (a) `microfactory serve`, one process that drives the machine itself (the
   baseline); (b) `microfactory serve --no-machines` plus `microfactory machines`, so each
   command goes web worker -> NOTIFY -> machine host -> printer -> NOTIFY -> web worker.
2. **`GET /api/v1/machines` under load.** N sim-grbl machines each stream a job of short
   moves while four clients poll the machine list: `serve` (one process) against
   `serve --workers 3` (three web workers and one machine host).

Run: .venv/bin/python bench/bench_channel.py --pg postgresql+psycopg://postgres@127.0.0.1:55432/postgres
(`scripts/pg.sh start` prints such a URL.)
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import _drop_pg_database as drop_db  # noqa: E402
from tests.conftest import _make_pg_database as make_db  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Shop:
    """Processes on one database."""

    def __init__(self, url: str, root: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFACTORY_")}
        self.env |= {
            "MICROFACTORY_DATABASE_URL": url,
            "MICROFACTORY_DATA_DIR": str(root),
            "MICROFACTORY_LOG_LEVEL": "WARNING",
            "MICROFACTORY_AUTO_DISPATCH": "false",
        }
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []

    def cli(self, *args: str, stdin: str = "") -> str:
        done = subprocess.run(
            [sys.executable, "-m", "microfactory.cli", *args], input=stdin, env=self.env,
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        return done.stdout.strip()

    def start(self, *args: str) -> None:
        log = (self.root / f"proc-{len(self.procs)}.log").open("wb")
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "microfactory.cli", *args],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def wait_until(check: Any, within: float = 120.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            result = check()
        except httpx.HTTPError:
            result = None
        if result:
            return result
        time.sleep(0.1)
    raise RuntimeError("timed out")


def token(shop: Shop) -> str:
    shop.cli("db", "upgrade")
    shop.cli("user", "create", "--username", "olga", "--role", "operator", "--password-stdin",
             stdin="olga-password-1\n")  # fmt: skip
    return shop.cli("token", "create", "--username", "olga")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def round_trip(base_url: str, *, split: bool, requests: int) -> list[float]:
    """Return each M105 round trip in ms, one process or web worker + machine host."""
    with tempfile.TemporaryDirectory() as tmp:
        url = make_db(base_url)
        shop = Shop(url, Path(tmp))
        try:
            headers = {"Authorization": f"Bearer {token(shop)}"}
            port = free_port()
            if split:
                shop.start("machines")
                shop.start("serve", "--no-machines", "--port", str(port))
            else:
                shop.start("serve", "--port", str(port))
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: httpx.get(f"{base}/healthz", timeout=1).is_success)
            with httpx.Client(base_url=base, headers=headers, timeout=30) as c:
                m = c.post("/api/v1/machines", json={
                    "name": "MK3", "kind": "fdm_printer", "driver": "sim-marlin",
                    "connection": {"speed_factor": 0, "baud": 0},
                    "build_volume_mm": {"x": 220, "y": 220, "z": 250}}).json()  # fmt: skip
                wait_until(lambda: c.get(f"/api/v1/machines/{m['id']}").json()["status"]["state"]
                           == "idle")  # fmt: skip
                for _ in range(20):  # warm up connections and caches
                    c.post(f"/api/v1/machines/{m['id']}/commands", json={"lines": ["M105"]})
                times = []
                for _ in range(requests):
                    t = time.perf_counter()
                    r = c.post(f"/api/v1/machines/{m['id']}/commands", json={"lines": ["M105"]})
                    times.append((time.perf_counter() - t) * 1000)
                    r.raise_for_status()
                return times
        finally:
            shop.stop()
            drop_db(base_url, url)


def program(lines: int) -> bytes:
    out = ["G21", "G90", "G1 F2000"]
    out += [f"G1 X{(i % 50) * 0.2:.1f} Y{(i % 7) * 0.3:.1f}" for i in range(lines - 3)]
    return ("\n".join(out) + "\n").encode()


def list_under_load(base_url: str, *, workers: int, machines: int, lines: int) -> list[float]:
    """Return GET /machines latencies (ms) while every machine streams a job."""
    with tempfile.TemporaryDirectory() as tmp:
        url = make_db(base_url)
        shop = Shop(url, Path(tmp))
        try:
            tok = token(shop)
            headers = {"Authorization": f"Bearer {tok}"}
            port = free_port()
            args = ["serve", "--port", str(port)]
            if workers > 1:
                args += ["--workers", str(workers)]
            shop.start(*args)
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: httpx.get(f"{base}/healthz", timeout=1).is_success)
            with httpx.Client(base_url=base, headers=headers, timeout=60) as c:
                ids = [
                    c.post("/api/v1/machines", json={
                        "name": f"Mill {i}", "kind": "cnc_mill", "driver": "sim-grbl",
                        "connection": {"speed_factor": 50},
                        "build_volume_mm": {"x": 300, "y": 300, "z": 60}}).json()["id"]
                    for i in range(machines)
                ]  # fmt: skip
                wait_until(lambda: all(m["status"]["state"] == "idle"
                                       for m in c.get("/api/v1/machines").json()), 300)  # fmt: skip
                gcode = program(lines)
                jobs = [
                    c.post("/api/v1/jobs", files={"file": ("p.nc", gcode, "text/plain")},
                           data={"machine_id": str(mid)}).json()["id"]
                    for mid in ids
                ]  # fmt: skip
                for jid in jobs:
                    resp = c.post(f"/api/v1/jobs/{jid}/dispatch")
                    if resp.is_error:
                        raise RuntimeError(f"dispatch of job {jid}: {resp.text}")
                stop = threading.Event()
                samples: list[float] = []

                def poll() -> None:
                    with httpx.Client(base_url=base, headers=headers, timeout=60) as pc:
                        while not stop.is_set():
                            t = time.perf_counter()
                            pc.get("/api/v1/machines").raise_for_status()
                            samples.append((time.perf_counter() - t) * 1000)
                            time.sleep(0.05)

                threads = [threading.Thread(target=poll) for _ in range(4)]
                for th in threads:
                    th.start()
                wait_until(lambda: all(c.get(f"/api/v1/jobs/{j}").json()["state"] != "running"
                                       for j in jobs), 900)  # fmt: skip
                stop.set()
                for th in threads:
                    th.join()
                return samples
        finally:
            shop.stop()
            drop_db(base_url, url)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg", default=os.environ.get("MICROFACTORY_TEST_POSTGRES_URL"))
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--machines", type=int, default=50)
    ap.add_argument("--lines", type=int, default=1500)
    ap.add_argument("--skip-load", action="store_true")
    args = ap.parse_args()
    if not args.pg:
        raise SystemExit("give --pg URL (scripts/pg.sh start prints one)")
    print(f"# {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")  # fmt: skip
    one = round_trip(args.pg, split=False, requests=args.requests)
    two = round_trip(args.pg, split=True, requests=args.requests)
    print("| command round trip (M105) | p50 ms | p99 ms | n |")
    print("|---|---|---|---|")
    for name, t in (("one process (baseline)", one), ("web worker -> NOTIFY -> host", two)):
        print(f"| {name} | {statistics.median(t):.1f} | {pct(t, 0.99):.1f} | {len(t)} |")
    if args.skip_load:
        return
    print()
    print(f"| GET /machines, {args.machines} machines streaming | p50 ms | p99 ms | n |")
    print("|---|---|---|---|")
    for workers in (1, 3):
        t = list_under_load(args.pg, workers=workers, machines=args.machines, lines=args.lines)
        label = "serve (one process)" if workers == 1 else "serve --workers 3"
        print(f"| {label} | {statistics.median(t):.1f} | {pct(t, 0.99):.1f} | {len(t)} |")


if __name__ == "__main__":
    main()
