"""Scale benchmark: 50 simulated machines streaming at once in one server process.

A real `microfactory serve` process (uvicorn, SQLite) drives 50 `sim-grbl` machines whose
simulators run in their own processes at an emulated 115200 baud, so the link is the limit
of each stream, as on a real machine. We measure:

- each stream's throughput (lines/s) with 50 running, against one stream running alone;
- the latency of `GET /api/v1/machines` while all 50 stream (p50, p99).

Run: .venv/bin/python bench/bench_scale.py [--machines 50] [--lines 2000]
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def program(lines: int) -> bytes:
    """Return a CNC program of short moves (the case that stresses a host)."""
    out = ["G21", "G90", "G1 F2000"]
    for i in range(lines - 3):
        out.append(f"G1 X{(i % 50) * 0.2:.1f} Y{(i % 7) * 0.3:.1f}")
    return ("\n".join(out) + "\n").encode()


class Server:
    def __init__(self, data: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFACTORY_")}
        env.update(
            MICROFACTORY_DATA_DIR=str(data),
            MICROFACTORY_LOG_LEVEL="WARNING",
            MICROFACTORY_AUTO_DISPATCH="false",
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "microfactory.cli", "serve", "--port", str(self.port)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=(data / "server.log").open("w"),
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def cli(data: Path, *args: str, stdin: str = "") -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFACTORY_")}
    env["MICROFACTORY_DATA_DIR"] = str(data)
    out = subprocess.run(
        [sys.executable, "-m", "microfactory.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
    )
    return out.stdout.strip()


def cpu_seconds(pid: int) -> float:
    """Return a process's user + system CPU time so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds(pid: int) -> float:
    """Return the CPU time of a process's live children (the simulator processes)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run_streams(client: httpx.Client, machines: list[dict[str, Any]], gcode: bytes) -> list[float]:
    """Start one job per machine at once; return each stream's lines/s."""
    jobs = []
    for m in machines:
        resp = client.post(
            "/api/v1/jobs",
            files={"file": ("p.nc", gcode, "text/plain")},
            data={"machine_id": str(m["id"])},
        )
        resp.raise_for_status()
        jobs.append(resp.json())
    for job in jobs:
        client.post(f"/api/v1/jobs/{job['id']}/dispatch").raise_for_status()
    done: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + 900
    while len(done) < len(jobs) and time.monotonic() < deadline:
        for job in jobs:
            if job["id"] in done:
                continue
            j = client.get(f"/api/v1/jobs/{job['id']}").json()
            if j["state"] in ("finished", "failed", "cancelled"):
                done[job["id"]] = j
        time.sleep(0.5)
    rates = []
    for j in done.values():
        if j["state"] != "finished":
            raise RuntimeError(f"job {j['id']} {j['state']}: {j['failure_reason']}")
        import datetime as dt

        started = dt.datetime.fromisoformat(j["started_at"])
        ended = dt.datetime.fromisoformat(j["ended_at"])
        rates.append(j["lines_total"] / (ended - started).total_seconds())
        client.post(f"/api/v1/jobs/{j['id']}/clear", json={"outcome": "good"})
    return rates


def poll_latency(url: str, token: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
        while not stop.is_set():
            t = time.perf_counter()
            c.get("/api/v1/machines").raise_for_status()
            out.append((time.perf_counter() - t) * 1000)
            time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--machines", type=int, default=50)
    ap.add_argument("--lines", type=int, default=2000)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        cli(data, "db", "upgrade")
        cli(
            data,
            "user",
            "create",
            "--username",
            "op",
            "--role",
            "operator",
            "--password-stdin",
            stdin="operator-pass-1\n",
        )
        token = cli(data, "token", "create", "--username", "op")
        server = Server(data)
        try:
            client = httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
            )
            machines = []
            for i in range(opts.machines):
                resp = client.post(
                    "/api/v1/machines",
                    json={
                        "name": f"Mill {i + 1:02d}",
                        "kind": "cnc_mill",
                        "driver": "sim-grbl",
                        "connection": {
                            "speed_factor": 1000,
                            "baud": 115200,
                            "isolation": "process",
                        },
                    },
                )
                resp.raise_for_status()
                machines.append(resp.json())
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                states = [m["status"]["state"] for m in client.get("/api/v1/machines").json()]
                if states.count("idle") == len(machines):
                    break
                time.sleep(0.5)
            gcode = program(opts.lines)
            solo = run_streams(client, machines[:1], gcode)[0]
            idle_lat: list[float] = []
            stop = threading.Event()
            t = threading.Thread(target=poll_latency, args=(server.url, token, stop, idle_lat))
            t.start()
            time.sleep(3)
            stop.set()
            t.join()
            lat: list[float] = []
            stop = threading.Event()
            t = threading.Thread(target=poll_latency, args=(server.url, token, stop, lat))
            t.start()
            cpu0 = cpu_seconds(server.proc.pid)
            sims0 = children_cpu_seconds(server.proc.pid)
            wall0 = time.monotonic()
            rates = run_streams(client, machines, gcode)
            wall = time.monotonic() - wall0
            server_cpu = (cpu_seconds(server.proc.pid) - cpu0) / wall
            sims_cpu = (children_cpu_seconds(server.proc.pid) - sims0) / wall
            stop.set()
            t.join()
        finally:
            server.stop()
    ratios = [r / solo for r in rates]
    q = statistics.quantiles(lat, n=100)
    print(
        f"date: {time.strftime('%Y-%m-%d')}  machine: {os.cpu_count()} cores {platform.machine()}, "
        f"python {platform.python_version()}"
    )
    print(f"solo stream: {solo:.0f} lines/s ({opts.lines} short lines at emulated 115200 baud)")
    print(
        f"{len(rates)} concurrent streams: min {min(rates):.0f}, median "
        f"{statistics.median(rates):.0f} lines/s; worst stream at {min(ratios) * 100:.1f} % "
        f"of solo, median {statistics.median(ratios) * 100:.1f} % (goal >= 90 %)"
    )
    print(
        f"GET /api/v1/machines while streaming: p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms "
        f"({len(lat)} requests); idle p50 {statistics.median(idle_lat):.1f} ms"
    )
    print(
        f"CPU while streaming: server process {server_cpu * 100:.0f} % of one core; the "
        f"{len(rates)} simulator processes {sims_cpu * 100:.0f} % (machine: {os.cpu_count()} cores)"
    )


if __name__ == "__main__":
    main()
