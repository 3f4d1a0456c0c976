"""Fixtures for the PrusaLink driver: one PrusaLink peer for the module (tests/peers)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:  # tests.peers lives in the repo, not in the installed package
    sys.path.insert(0, str(REPO))

from drivers.prusalink import PrusaLinkDriver  # noqa: E402
from tests.peers.prusalink_server import PrusaLinkServer  # noqa: E402


@pytest.fixture(scope="module")
def prusalink_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrusaLinkServer]:
    """Start one PrusaLink peer for the module; its printer runs moves 10 times faster."""
    server = PrusaLinkServer(tmp_path_factory.mktemp("prusalink") / "gcodes", speed_factor=10.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prusalink(prusalink_server: PrusaLinkServer) -> PrusaLinkServer:
    """Return the peer with its printer idle (a test may have left it in ERROR)."""
    if prusalink_server._server is None:  # a test stopped it
        prusalink_server.start()
    prusalink_server.printer.reset()
    prusalink_server.printer.free_space = 1 << 30
    return prusalink_server


@pytest.fixture
async def make_driver(
    prusalink: PrusaLinkServer,
) -> AsyncIterator[Callable[..., PrusaLinkDriver]]:
    """Return a factory of drivers for the peer (digest auth by default); all are closed."""
    drivers: list[PrusaLinkDriver] = []

    def make(**overrides: Any) -> PrusaLinkDriver:
        settings: dict[str, Any] = {
            "url": prusalink.url,
            "username": prusalink.user,
            "password": prusalink.password,
            "timeout_s": 5,
            "poll_interval_s": 0.1,
            "max_backoff_s": 0.5,
            **overrides,
        }
        driver = PrusaLinkDriver({k: v for k, v in settings.items() if v is not None})
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        await driver.close()
