"""sim-marlin runs motion with the analyser's planner: a job takes the time it was estimated,
and the driver reports it finished no earlier than the motion ends."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import pytest

from drivers.base import EventKind, Program
from drivers.planner import arc_geometry, marlin_arc_segments
from drivers.sim.marlin import SimMarlinDriver
from microfactory.analysis import analyse_gcode
from tests.drivers.marlin.marlin_helpers import EventLog

pytestmark = pytest.mark.timeout(60)


def print_like_program() -> str:
    """About 12 s: a slow start (M201/M204), short extrusions round a circle, an arc, travel."""
    lines = ["G21", "G90", "M83", "M201 X500 Y500 Z100 E2000", "M204 P400 T600"]
    lines.append("G0 X125 Y100 F6000")
    lines.append("G1 F1200")
    for k in range(120):  # 1.3 mm chords of a 50 mm circle at 20 mm/s
        a = 2 * math.pi * (k + 1) / 120
        lines.append(f"G1 X{100 + 25 * math.cos(a):.3f} Y{100 + 25 * math.sin(a):.3f} E0.1")
    # A G2 full circle of radius 5 (31.4 mm at 20 mm/s): run as a straight line it would
    # take no time at all, since it ends where it starts.
    lines += ["G1 X105 Y100 F1200", "G2 X105 Y100 I-5 J0 E1.5"]
    lines += ["G1 X20 Y20 F6000", "G1 X60 Y30"]
    return "\n".join(lines) + "\n"


async def test_a_sim_marlin_job_takes_the_time_the_analyser_estimates() -> None:
    driver = SimMarlinDriver({"speed_factor": 1.0, "baud": 115200, "connect_timeout_s": 5.0})
    try:
        await asyncio.wait_for(driver.connect(), 10)
        text = print_like_program()
        sim = driver.simulator
        assert sim is not None
        # The printer's own limits (what M503 reports), changed by the file's M201/M204.
        estimate = analyse_gcode(text, machine_limits=sim.motion_limits()).estimated_time_s
        assert estimate > 4.0
        events = await EventLog(driver).started()
        t0 = time.monotonic()
        await driver.start(Program.from_text("print.gcode", text))
        end = await events.wait(EventKind.FINISHED, EventKind.FAILED, within=40)
        events.close()
        assert end.kind is EventKind.FINISHED, end.data
        actual = time.monotonic() - t0
        # Marlin acknowledges a move once it is planned: the job's last `ok` comes while up
        # to 15 blocks still run. The driver reports the job finished only when the M400 it
        # sends after the last line is acknowledged, i.e. when the printer has stopped.
        assert not await asyncio.to_thread(sim.moving)
        assert end.data["motion_wait_s"] > 0.1  # the tail of the program was still moving
        assert sim.executed[-1] == "M400"
        assert actual == pytest.approx(estimate, rel=0.05), (actual, estimate)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(driver.close(), 10)


def test_arc_geometry_and_marlins_segments_by_hand() -> None:
    # A quarter circle from (10, 0) to (0, 10) round the origin, counter-clockwise.
    cx, cy, radius, angle = arc_geometry((10.0, 0.0), (0.0, 10.0), (-10.0, 0.0), None, False)
    assert (cx, cy, radius) == pytest.approx((0.0, 0.0, 10.0))
    assert angle == pytest.approx(math.pi / 2)
    # Clockwise the other way round: three quarters.
    assert arc_geometry((10.0, 0.0), (0.0, 10.0), (-10.0, 0.0), None, True)[3] == pytest.approx(
        -3 * math.pi / 2
    )
    # R instead of I/J: the same quarter (R > 0, the short arc).
    assert arc_geometry((10.0, 0.0), (0.0, 10.0), None, 10.0, False)[:3] == pytest.approx(
        (0.0, 0.0, 10.0)
    )
    # At 10 mm/s a segment is 10 / 50 = 0.2 mm; the arc is 10 * pi / 2 = 15.708 mm long:
    # int(78.54) = 78 segments. Slower than 5 mm/s the segment stays 0.1 mm, faster than
    # 50 mm/s 1 mm (Marlin 1's MM_PER_ARC_SEGMENT).
    assert marlin_arc_segments(math.pi / 2, 10.0, 10.0) == 78
    assert marlin_arc_segments(math.pi / 2, 10.0, 1.0) == 157
    assert marlin_arc_segments(math.pi / 2, 10.0, 200.0) == 15


async def test_sim_marlin_runs_an_arc_along_its_segments() -> None:
    driver = SimMarlinDriver({"speed_factor": 20.0, "connect_timeout_s": 5.0})
    try:
        await asyncio.wait_for(driver.connect(), 10)
        sim = driver.simulator
        assert sim is not None
        program = ["G90", "G1 X10 Y0 F600", "G3 X0 Y10 I-10 J0"]
        events = await EventLog(driver).started()
        await driver.start(Program(name="arc", lines=tuple(program)))
        end = await events.wait(EventKind.FINISHED, EventKind.FAILED, within=20)
        events.close()
        assert end.kind is EventKind.FINISHED, end.data
        # 10 mm to the start, then 78 chords of the quarter circle (radius 10): by hand,
        # 2 * 10 * 78 * sin((pi / 2) / (2 * 78)) = 15.7077 mm (the arc is 15.7080 mm; a
        # straight line from (10, 0) to (0, 10) would be 14.142 mm).
        assert sim.stats.path_mm == pytest.approx(10.0 + 15.7077, abs=1e-3)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(driver.close(), 10)
