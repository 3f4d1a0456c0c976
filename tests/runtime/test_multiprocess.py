"""Several processes on PostgreSQL: web workers command machines driven by one machine host.

Real processes on loopback: one `microfactory machines` (the supervisors, on sim-marlin and
sim-grbl ptys) and three `microfactory serve --no-machines` web workers on their own ports, so
each command goes to a chosen worker. Then `microfactory serve --workers 3`, as a shop runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PG_URL, _drop_pg_database, _make_pg_database, require_or_skip
from tests.peers.microfactory_server import run_cli_batch, user_commands
from tests.samples import data_file

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(300)]

# A long enough CNC program to pause, resume and cancel while it runs (sim speed factor 1).
SLOW_CNC = b"G21\nG90\nG0 Z5\nM3 S10000\n" + b"".join(
    f"G1 X{(i % 2) * 50} Y{i % 40} F3000\n".encode() for i in range(400)
)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(check: Callable[[], Any], within: float = 60.0, what: str = "") -> Any:
    """Poll until check() is truthy, bounded (the bound is a safety net, not a measurement)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")


class Shop:
    """Processes sharing one PostgreSQL database."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFACTORY_")}
        self.env |= {
            "MICROFACTORY_DATABASE_URL": url,
            "MICROFACTORY_DATA_DIR": str(root / "data"),
            "MICROFACTORY_LOG_JSON": "false",
            "MICROFACTORY_AUTO_DISPATCH": "false",
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def cli(self, *args: str, stdin: str = "") -> str:
        done = subprocess.run(
            [sys.executable, "-m", "microfactory.cli", *args], input=stdin, env=self.env,
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start(self, *args: str, name: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "microfactory.cli", *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_healthy(base: str) -> None:
    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    # Four processes importing the app at once: on a loaded 2-core machine that takes a while.
    poll(up, within=180, what=f"{base} to serve")


class Stream:
    """One worker's SSE stream of machine status, read in a thread."""

    def __init__(self, base: str, token: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, args=(base, token), daemon=True)
        self._thread.start()

    def _read(self, base: str, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.stream(
            "GET", f"{base}/api/v1/machines/stream", headers=headers, timeout=60
        ) as resp:
            kind = ""
            for line in resp.iter_lines():
                if self._stop:
                    return
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    self.events.append({"kind": kind, **json.loads(line[6:])})

    def saw(self, machine_id: int, since: int, test: Callable[[dict[str, Any]], bool]) -> bool:
        return any(
            e["kind"] == "machine" and e["id"] == machine_id and test(e["status"])
            for e in list(self.events)[since:]
        )

    def saw_job(self, job_id: int, since: int, to: str) -> bool:
        return any(
            e["kind"] == "job" and e["id"] == job_id and e["event"]["to"] == to
            for e in list(self.events)[since:]
        )

    def close(self) -> None:
        self._stop = True


@pytest.fixture
def pg_url() -> Iterator[str]:
    require_or_skip(
        PG_URL is not None, "PostgreSQL is not running (MICROFACTORY_TEST_POSTGRES_URL)"
    )
    assert PG_URL is not None
    url = _make_pg_database(PG_URL)
    yield url
    _drop_pg_database(PG_URL, url)


def _tokens(shop: Shop) -> dict[str, str]:
    users = (("olga", "operator"), ("mia", "member"))
    made = run_cli_batch(
        [(["db", "upgrade"], ""), *(c for name, role in users for c in user_commands(name, role))],
        env=shop.env,
    )
    # One process for the five commands; each user's token is its second command's output.
    return {name: made[2 + 2 * i].strip() for i, (name, _) in enumerate(users)}


def test_every_command_from_any_worker_acts_on_the_machine(tmp_path: Path, pg_url: str) -> None:
    shop = Shop(tmp_path, pg_url)
    tokens = _tokens(shop)
    op = {"Authorization": f"Bearer {tokens['olga']}"}
    member = {"Authorization": f"Bearer {tokens['mia']}"}
    ports = [_free_port() for _ in range(3)]
    try:
        shop.start("machines", name="host")
        for i, port in enumerate(ports):
            shop.start("serve", "--no-machines", "--port", str(port), name=f"web{i}")
        workers = [f"http://127.0.0.1:{p}" for p in ports]
        for base in workers:
            wait_healthy(base)
        streams = [Stream(base, tokens["olga"]) for base in workers]
        a, b, c = workers

        # A machine created through worker A is supervised by the host, and every worker
        # sees it connect.
        def add(base: str, body: dict[str, Any]) -> dict[str, Any]:
            resp = httpx.post(f"{base}/api/v1/machines", json=body, headers=op, timeout=30)
            assert resp.status_code == 201, resp.text
            return dict(resp.json())

        mill = add(a, {"name": "Mill", "kind": "cnc_mill", "driver": "sim-grbl",
                       "connection": {"speed_factor": 1},
                       "build_volume_mm": {"x": 300, "y": 300, "z": 60}})  # fmt: skip
        printer = add(b, {"name": "MK3", "kind": "fdm_printer", "driver": "sim-marlin",
                          "connection": {"speed_factor": 50},
                          "build_volume_mm": {"x": 220, "y": 220, "z": 250},
                          "capabilities": {"nozzle_diameter_mm": 0.4,
                                           "loaded_material": "PLA"}})  # fmt: skip

        def state_on(base: str, machine_id: int) -> str:
            got = httpx.get(f"{base}/api/v1/machines/{machine_id}", headers=op, timeout=10)
            return str(got.json()["status"]["state"])

        for base in workers:
            for machine in (mill, printer):
                poll(lambda base=base, m=machine: state_on(base, m["id"]) == "idle",
                     what=f"{machine['name']} idle as seen by {base}")  # fmt: skip
        for stream in streams:
            poll(lambda s=stream: s.saw(mill["id"], 0, lambda st: st["state"] == "idle"),
                 what="the SSE stream of every worker shows the mill")  # fmt: skip

        # A raw command through worker C reaches the printer and returns its reply.
        sent = httpx.post(f"{c}/api/v1/machines/{printer['id']}/commands",
                          json={"lines": ["M105"]}, headers=op, timeout=30)  # fmt: skip
        assert sent.status_code == 200, sent.text
        assert sent.json()["results"][0]["ok"] is True
        assert "T:" in " ".join(sent.json()["results"][0]["reply"])

        # A job: uploaded on B, approved on C, dispatched on A, paused on B, resumed on C,
        # cancelled on A.
        job = httpx.post(f"{b}/api/v1/jobs", files={"file": ("part.nc", SLOW_CNC, "text/plain")},
                         data={"machine_id": str(mill["id"])}, headers=member,
                         timeout=30).json()  # fmt: skip
        assert httpx.post(f"{c}/api/v1/jobs/{job['id']}/approve", headers=op).status_code == 200

        def act(base: str, action: str) -> dict[str, Any]:
            resp = httpx.post(f"{base}/api/v1/jobs/{job['id']}/{action}", headers=op, timeout=30)
            assert resp.status_code == 200, (action, resp.text)
            return dict(resp.json())

        def job_state(base: str) -> str:
            return str(httpx.get(f"{base}/api/v1/jobs/{job['id']}", headers=op).json()["state"])

        mark = [len(s.events) for s in streams]
        assert act(a, "dispatch")["machine_id"] == mill["id"]
        poll(lambda: job_state(c) == "running", what="the job running")
        for stream, since in zip(streams, mark, strict=True):
            poll(lambda s=stream, n=since: s.saw(mill["id"], n,
                                               lambda st: st.get("job_id") == job["id"]),
                 what="every stream shows the job on the mill")  # fmt: skip
            # The transition itself, committed by the machine host, reaches every stream.
            poll(lambda s=stream, n=since: s.saw_job(job["id"], n, "running"),
                 what="every stream shows the job's transition to running")  # fmt: skip

        mark = [len(s.events) for s in streams]
        act(b, "pause")
        poll(lambda: job_state(a) == "paused", what="the job paused")
        for stream, since in zip(streams, mark, strict=True):
            poll(lambda s=stream, n=since: s.saw(mill["id"], n,
                                               lambda st: st["state"] == "paused"),
                 what="every stream shows the mill paused")  # fmt: skip
        act(c, "resume")
        poll(lambda: job_state(b) == "running", what="the job running again")
        act(a, "cancel")
        poll(lambda: job_state(c) == "cancelled", what="the job cancelled")
        poll(lambda: state_on(b, mill["id"]) != "running", what="the mill to stop")

        # An emergency stop through worker B halts the printer.
        mark = [len(s.events) for s in streams]
        stop = httpx.post(f"{b}/api/v1/machines/{printer['id']}/emergency-stop", headers=op,
                          timeout=30)  # fmt: skip
        assert stop.status_code == 200, stop.text
        for stream, since in zip(streams, mark, strict=True):
            poll(lambda s=stream, n=since: s.saw(printer["id"], n,
                                               lambda st: st["state"] != "idle"),
                 what="every stream shows the printer stopped")  # fmt: skip

        # A machine changed through worker C is re-supervised by the host: rename it, then
        # disable it at once. Every worker's stream carries both announcements (never merged
        # with the host's coalesced status), so every open grid shows the new name.
        mark = [len(s.events) for s in streams]
        url = f"{c}/api/v1/machines/{printer['id']}"
        renamed = httpx.patch(url, json={"name": "MK3 left"}, headers=op, timeout=30)
        assert renamed.status_code == 200, renamed.text
        changed = httpx.patch(url, json={"enabled": False}, headers=op, timeout=30)
        assert changed.status_code == 200, changed.text
        for stream, since in zip(streams, mark, strict=True):
            poll(lambda s=stream, n=since: s.saw(printer["id"], n,
                                               lambda st: st.get("name") == "MK3 left"
                                               and st.get("edited") is True),
                 what="every stream told of the rename")  # fmt: skip
        poll(lambda: state_on(a, printer["id"]) == "offline", what="the printer disabled")
        for stream in streams:
            stream.close()
    finally:
        shop.stop()


def test_serve_with_three_workers_drives_the_machines(tmp_path: Path, pg_url: str) -> None:
    shop = Shop(tmp_path, pg_url)
    tokens = _tokens(shop)
    op = {"Authorization": f"Bearer {tokens['olga']}"}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        shop.start("serve", "--workers", "3", "--port", str(port), name="serve")
        wait_healthy(base)
        created = httpx.post(f"{base}/api/v1/machines", headers=op, timeout=30, json={
            "name": "Mill", "kind": "cnc_mill", "driver": "sim-grbl",
            "connection": {"speed_factor": 50},
            "build_volume_mm": {"x": 300, "y": 300, "z": 60}})  # fmt: skip
        assert created.status_code == 201, created.text
        mid = created.json()["id"]

        # Every new connection may land on any of the three workers: all of them answer
        # with the live status and pass commands on.
        def idle_everywhere() -> bool:
            states = {
                httpx.get(f"{base}/api/v1/machines/{mid}", headers=op).json()["status"]["state"]
                for _ in range(6)
            }
            return states == {"idle"}

        poll(idle_everywhere, what="the mill idle on every worker")
        member = {"Authorization": f"Bearer {tokens['mia']}"}
        job = httpx.post(f"{base}/api/v1/jobs", headers=member, timeout=30,
                         files={"file": ("p.nc", data_file("gcode", "cnc", "pocket-and-contour.nc")
                                         .read_bytes(), "text/plain")},
                         data={"machine_id": str(mid)}).json()  # fmt: skip
        assert httpx.post(f"{base}/api/v1/jobs/{job['id']}/approve", headers=op).is_success
        dispatched = httpx.post(f"{base}/api/v1/jobs/{job['id']}/dispatch", headers=op, timeout=30)
        assert dispatched.status_code == 200, dispatched.text
        done = poll(
            lambda: (
                (j := httpx.get(f"{base}/api/v1/jobs/{job['id']}", headers=op).json())["state"]
                in ("finished", "failed")
                and j
            ),
            within=120,
            what="the job to end",
        )
        assert done["state"] == "finished", done["failure_reason"]
    finally:
        shop.stop()
    log = (tmp_path / "serve.log").read_text()
    assert log.count("Started server process") == 3
    assert "machine host running" in log
