"""The octoprint driver reads the printer profile's axis speeds as the machine's limits."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from drivers.octoprint import OctoPrintDriver, profile_motion_limits

pytestmark = pytest.mark.slow

MakeDriver = Callable[..., OctoPrintDriver]


async def test_connect_reads_the_current_printer_profile(make_driver: MakeDriver) -> None:
    driver = make_driver()
    try:
        await driver.connect()
        lim = driver.motion_limits
        assert lim is not None
        # OctoPrint's default profile: X/Y 6000 mm/min, Z 200, E 300.
        assert lim["max_feedrate"] == pytest.approx([100.0, 100.0, 200 / 60, 5.0])
        assert lim["firmware"] == "marlin"
        assert "printer profile" in lim["source"]
        assert lim["read_at"]
    finally:
        await driver.close()


def test_a_profile_without_speeds_keeps_the_marlin_defaults() -> None:
    lim = profile_motion_limits({"profiles": {"a": {"id": "a", "current": True}}}, "here")
    assert lim is not None
    assert lim["max_feedrate"] == [500.0, 500.0, 12.0, 120.0]
    assert profile_motion_limits({"profiles": {}}, "here") is None
    assert profile_motion_limits("nonsense", "here") is None
