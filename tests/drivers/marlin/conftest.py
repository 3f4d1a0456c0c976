"""Fixtures for the marlin driver tests: simulated printers and VirtualPrinter bridges."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.sim.marlin import SimMarlinDriver
from tests.conftest import require_or_skip
from tests.drivers.marlin.marlin_helpers import Bridge, octoprint_python


@pytest.fixture
async def make_sim() -> AsyncIterator[Callable[..., Awaitable[SimMarlinDriver]]]:
    """Create connected sim-marlin drivers; all are closed after the test."""
    drivers: list[SimMarlinDriver] = []

    async def make(**settings: Any) -> SimMarlinDriver:
        settings.setdefault("speed_factor", 0)
        settings.setdefault("baud", 0)
        settings.setdefault("connect_timeout_s", 5.0)
        driver = SimMarlinDriver(settings)
        drivers.append(driver)
        await asyncio.wait_for(driver.connect(), 10)
        return driver

    yield make
    for driver in drivers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(driver.close(), 10)


@pytest.fixture
def octoprint_venv() -> Path:
    """Return OctoPrint's python, skipping (or failing in CI) when it is not installed."""
    python = octoprint_python()
    require_or_skip(
        python.exists(),
        f"OctoPrint's venv not found at {python.parent.parent} "
        "(run scripts/octoprint-venv.sh or set MICROFACTORY_OCTOPRINT_VENV)",
    )
    return python


@pytest.fixture
def bridges(octoprint_venv: Path, tmp_path: Path) -> Iterator[list[Bridge]]:
    """Collect bridges started by a test and stop them afterwards."""
    started: list[Bridge] = []
    yield started
    for bridge in started:
        bridge.stop()
