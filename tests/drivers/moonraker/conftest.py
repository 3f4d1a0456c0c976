"""Fixtures for the Moonraker driver: the real Moonraker 0.11 and the Klippy emulator behind it."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:  # tests.peers lives in the repo, not in the installed package
    sys.path.insert(0, str(REPO))

from drivers.moonraker import MoonrakerDriver  # noqa: E402
from tests.conftest import require_or_skip  # noqa: E402
from tests.peers.moonraker_server import (  # noqa: E402
    MoonrakerServer,
    moonraker_python,
    venv_path,
)


@pytest.fixture(scope="module")
def moonraker_server() -> Iterator[MoonrakerServer]:
    """Start one Moonraker with its emulated Klippy for the module (about a second)."""
    python = moonraker_python()
    require_or_skip(
        python is not None,
        f"Moonraker is not installed in {venv_path()}; run scripts/moonraker-venv.sh "
        "(or set MICROFACTORY_MOONRAKER_VENV)",
    )
    assert python is not None
    # Moves take the time our planner gives them, ten times faster: the tests' programs of
    # 300 moves print in about 2 s, those of 20,000 moves would take two minutes.
    server = MoonrakerServer(python=python, speed_factor=10.0)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def moonraker(moonraker_server: MoonrakerServer) -> MoonrakerServer:
    """Return the server with Klippy ready and idle (a test may have shut it down)."""
    assert moonraker_server.klippy is not None
    moonraker_server.klippy.reset()
    return moonraker_server


@pytest.fixture
async def make_driver(
    moonraker: MoonrakerServer,
) -> AsyncIterator[Callable[..., MoonrakerDriver]]:
    """Return a factory of drivers for the test server; all are closed afterwards."""
    drivers: list[MoonrakerDriver] = []

    def make(**overrides: Any) -> MoonrakerDriver:
        settings: dict[str, Any] = {
            "url": moonraker.url,
            "timeout_s": 5,
            "max_backoff_s": 1.0,
            **overrides,
        }
        driver = MoonrakerDriver(settings)
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        await driver.close()
