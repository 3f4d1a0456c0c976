"""sim-grbl runs motion with the analyser's planner, and the driver reads `$$` at connect."""

from __future__ import annotations

import asyncio
import time

import pytest

from drivers.base import EventKind, Program
from drivers.grbl import GrblDriver
from drivers.planner import limits_from_dict
from drivers.sim.grbl import GrblSimulator
from microfactory.analysis import analyse_gcode
from tests.drivers.grbl.test_grbl_driver import make_grbl, sim_of

__all__ = ["make_grbl"]  # the fixture, re-used

pytestmark = pytest.mark.timeout(60)


def mixed_program() -> str:
    """About 6 s at stock GRBL limits: tiny segments (buffer-bound), corners, a power ramp."""
    lines = ["G21 G90", "$32=1", "M4 S0", "G0 X1 Y1"]
    for k in range(160):  # 0.05 mm steps: the 15-block buffer bounds the speed to ~3.7 mm/s
        lines.append(f"G1 X{1 + (k + 1) * 0.05:.2f} S{(k % 5) * 200} F1500")
    lines += ["G1 Y6 F300", "G1 X3", "G2 X1 Y6 I-1 J0", "G1 Y1", "M5"]
    return "\n".join(lines) + "\n"


async def test_a_sim_job_takes_the_time_the_analyser_estimates(make_grbl) -> None:  # type: ignore[no-untyped-def]
    driver, log = await make_grbl(speed_factor=1.0)
    sim = sim_of(driver)
    assert driver.motion_limits is not None
    text = mixed_program()
    # The $32=1 line switches laser mode on (an EEPROM write the driver sends alone).
    limits = limits_from_dict({**driver.motion_limits, "laser_mode": True})
    estimate = analyse_gcode(text, machine_limits=limits).estimated_time_s
    assert estimate > 4.0
    t0 = time.monotonic()
    await driver.start(Program.from_text("mixed.nc", text))
    # Watch the machine itself: from its first motion until it is idle after the last.
    moving_from: float | None = None
    moving_until: float | None = None
    async with asyncio.timeout(40):
        while not any(k in (EventKind.FINISHED, EventKind.FAILED) for k in log.kinds()):
            now = time.monotonic()
            if sim.state == "Run" and moving_from is None:
                moving_from = now
            elif sim.state == "Idle" and moving_from is not None:
                moving_until = now
            await asyncio.sleep(0.005)
    job_s = time.monotonic() - t0
    assert log.kinds()[-1] is EventKind.FINISHED
    assert moving_from is not None
    assert moving_until is not None
    machine_s = moving_until - moving_from
    # The machine runs the program in the time the analyser planned.
    assert machine_s == pytest.approx(estimate, rel=0.05), (machine_s, estimate)
    # The job adds the driver's start and its last status poll (0.2 s apart) to learn the end.
    assert job_s == pytest.approx(estimate + driver.poll_interval_s, rel=0.05), (job_s, estimate)


async def test_connect_reads_the_controllers_own_limits(make_grbl) -> None:  # type: ignore[no-untyped-def]
    driver, _ = await make_grbl()
    sim = sim_of(driver)
    lim = driver.motion_limits
    assert lim is not None
    assert lim["firmware"] == "grbl"
    assert lim["max_acceleration"][:3] == [10.0, 10.0, 10.0]  # $120-$122, stock GRBL 1.1
    assert lim["max_feedrate"][:3] == pytest.approx([500 / 60] * 3)  # $110-$112 in mm/s
    assert lim["junction_deviation"] == 0.01
    assert lim["arc_tolerance"] == 0.002
    assert lim["block_buffer_size"] == 16  # [OPT:...,15,...] usable blocks + 1
    assert lim["laser_mode"] is False
    assert lim["spindle_max"] == 1000.0
    assert lim["source"].startswith("GRBL $$ on ")
    assert lim["read_at"].endswith("+00:00")
    assert limits_from_dict(lim) == sim.motion_limits()


async def test_a_tuned_controllers_settings_are_read() -> None:
    sim = GrblSimulator(
        speed_factor=50.0, settings={120: 250.0, 110: 3000.0, 11: 0.02, 12: 0.01, 32: 1}
    )
    path = await asyncio.to_thread(sim.start)
    driver = GrblDriver({"port": path})
    try:
        await asyncio.wait_for(driver.connect(), 15)
        lim = driver.motion_limits
        assert lim is not None
        assert lim["max_acceleration"][:3] == [250.0, 10.0, 10.0]
        assert lim["max_feedrate"][0] == pytest.approx(50.0)
        assert lim["junction_deviation"] == 0.02
        assert lim["arc_tolerance"] == 0.01
        assert lim["laser_mode"] is True
        assert lim["settings"]["$120"] == 250.0
        # The simulator plans with the same limits it reports.
        assert limits_from_dict(lim) == sim.motion_limits()
    finally:
        await driver.close()
        await asyncio.to_thread(sim.stop)


@pytest.mark.parametrize("isolation", ["thread", "process"])
async def test_sim_grbl_takes_its_settings_from_the_machine_connection(
    make_grbl,  # type: ignore[no-untyped-def]
    isolation: str,
) -> None:
    driver, _ = await make_grbl(isolation=isolation, grbl_settings={"120": 250, "$32": 1})
    lim = driver.motion_limits
    assert lim is not None
    assert lim["max_acceleration"][0] == 250.0
    assert lim["laser_mode"] is True


async def test_bad_sim_grbl_settings_are_refused(make_grbl) -> None:  # type: ignore[no-untyped-def]
    from drivers.base import DriverError

    with pytest.raises(DriverError, match="no setting"):
        await make_grbl(grbl_settings={"999": 1})
