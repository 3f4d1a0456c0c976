"""Fixtures for the OctoPrint driver: one real OctoPrint server for the whole session."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:  # tests.peers lives in the repo, not in the installed package
    sys.path.insert(0, str(REPO))

from drivers.octoprint import OctoPrintDriver  # noqa: E402
from tests.drivers.octoprint.octoprint_helpers import WAIT_S  # noqa: E402
from tests.peers.octoprint_server import (  # noqa: E402
    OctoPrintServer,
    octoprint_executable,
    venv_path,
)


@pytest.fixture(scope="session")
def octoprint_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OctoPrintServer]:
    """Start one OctoPrint server with its virtual printer for the whole test session."""
    exe = octoprint_executable()
    if exe is None:
        reason = (
            f"OctoPrint is not installed in {venv_path()}; "
            "run scripts/octoprint-venv.sh (or set MICROFACTORY_OCTOPRINT_VENV)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    server = OctoPrintServer(executable=exe, basedir=tmp_path_factory.mktemp("octoprint"))
    server.prepare()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def octoprint(octoprint_server: OctoPrintServer) -> OctoPrintServer:
    """Return the server, running, with its printer connected and not printing."""
    server = octoprint_server
    if server.process is None or server.process.poll() is not None:
        server.start()  # a test killed it
    state = server.api("GET", "/api/connection").json()["current"]["state"]
    if state not in ("Operational", "Printing", "Paused", "Pausing", "Cancelling"):
        server.api("POST", "/api/connection", json={"command": "connect", "port": "VIRTUAL"})
    deadline = time.monotonic() + WAIT_S
    while True:
        state = server.api("GET", "/api/job").json()["state"]
        if state == "Operational":
            return server
        if state in ("Printing", "Paused"):
            server.api("POST", "/api/job", json={"command": "cancel"})
        if time.monotonic() > deadline:
            raise RuntimeError(f"OctoPrint's printer did not get ready (state: {state})")
        time.sleep(0.1)


@pytest.fixture
async def make_driver(
    octoprint: OctoPrintServer,
) -> AsyncIterator[Callable[..., OctoPrintDriver]]:
    """Return a factory of drivers for the test server; all are closed afterwards."""
    drivers: list[OctoPrintDriver] = []

    def make(**overrides: Any) -> OctoPrintDriver:
        settings: dict[str, Any] = {
            "url": octoprint.url,
            "api_key": octoprint.api_key,
            "printer_port": "VIRTUAL",
            "timeout_s": 5,
            "poll_interval_s": 0.25,
            "max_backoff_s": 1.0,
            **overrides,
        }
        driver = OctoPrintDriver(settings)
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        await driver.close()
