"""After the server is killed with SIGKILL mid-print, a restart switches the heaters off.

The printer (a simulated Marlin on a real pty, in this test process) outlives the server, as
a USB printer does: it keeps its nozzle and bed at temperature. The serial job cannot resume
(the restart fails it with the reason), so when the new server reconnects it sends M104 S0 and
M140 S0; the assertion is on what the printer received.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from drivers.sim.marlin import MarlinSimulator
from tests.peers.microfactory_server import run_cli_batch, user_commands
from tests.security.test_security_orphans import _cli, _free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ptys and signals"),
]

# Heats, then prints slowly enough (speed factor 1) to be killed in the middle.
PRINT = b"M140 S60\nM104 S200\nG28\nG1 Z0.2 F600\n" + b"".join(
    f"G1 X{10 + i % 30} Y{10 + i % 11} E{i * 0.05:.2f} F600\n".encode() for i in range(400)
)


def poll(check: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def printer() -> Iterator[MarlinSimulator]:
    sim = MarlinSimulator(speed_factor=1.0, heat_rate=500.0, bed_heat_rate=500.0, home_s=0.1)
    sim.start_in_thread()
    try:
        yield sim
    finally:
        sim.stop_thread()


class Server:
    """`microfactory serve` processes on one data dir, started and killed by the test."""

    def __init__(self, root: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFACTORY_")}
        self.env.update(
            MICROFACTORY_DATA_DIR=str(root / "data"),
            MICROFACTORY_LOG_JSON="false",
            MICROFACTORY_AUTO_DISPATCH="false",
        )
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = ""

    def cli(self, *args: str, stdin: bytes = b"") -> str:
        done = subprocess.run(
            [*_cli(), *args], input=stdin, env=self.env, capture_output=True, timeout=120,
            check=True,
        )  # fmt: skip
        return done.stdout.decode()

    def start(self, name: str) -> None:
        port = _free_port()
        log = (self.root / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(
            [*_cli(), "serve", "--port", str(port)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, "the server exited"
            try:
                return httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        poll(up, 60, "the server to start")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    run_cli_batch(  # one process for both set-up commands
        [(["db", "upgrade"], ""), user_commands("olga", "operator", "olga-pass-12")[0]],
        env=srv.env,
    )
    try:
        yield srv
    finally:
        srv.stop()


def test_heaters_are_switched_off_when_the_server_reconnects_after_a_crash(
    server: Server, printer: MarlinSimulator
) -> None:
    token = server.cli("token", "create", "--username", "olga").strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {token}"}
    server.start("first")

    def get(path: str) -> Any:
        return httpx.get(f"{server.base}{path}", headers=headers, timeout=10).json()

    machine = httpx.post(
        f"{server.base}/api/v1/machines",
        json={
            "name": "Printer",
            "kind": "fdm_printer",
            "driver": "marlin",
            "connection": {"port": printer.path},
            "build_volume_mm": {"x": 220, "y": 220, "z": 250},
        },
        headers=headers,
        timeout=10,
    ).json()
    poll(lambda: get(f"/api/v1/machines/{machine['id']}")["status"]["state"] == "idle", 60, "idle")
    job = httpx.post(
        f"{server.base}/api/v1/jobs",
        files={"file": ("part.gcode", PRINT, "text/plain")},
        data={"machine_id": str(machine["id"])},
        headers=headers,
        timeout=30,
    ).json()
    resp = httpx.post(
        f"{server.base}/api/v1/jobs/{job['id']}/dispatch", headers=headers, timeout=30
    )
    assert resp.status_code == 200, resp.text
    # Mid-print: heaters on, some moves done, most still to come.
    poll(lambda: sum(c.startswith("G1 X") for c in list(printer.executed)) >= 5, 60, "printing")
    assert "M104 S200" in printer.executed
    server.kill()
    crashed_at = len(printer.executed)
    printing = printer.executed[printer.executed.index("M140 S60") :]
    assert not any(c in ("M104 S0", "M140 S0") for c in printing)  # left hot by the crash

    server.start("second")
    after = get(f"/api/v1/jobs/{job['id']}")
    assert after["state"] == "failed"
    assert after["failure_reason"].startswith("interrupted by a restart")
    received = poll(
        lambda: (
            rest
            if {"M104 S0", "M140 S0"} <= set(rest := list(printer.executed)[crashed_at:])
            else None
        ),
        60,
        "the heaters to be switched off",
    )
    # The lines already in the printer's queue at the crash ran; nothing was streamed after.
    after_off = received[received.index("M104 S0") :]
    assert not any(c.startswith("G1 X") for c in after_off), "the job must not resume"
