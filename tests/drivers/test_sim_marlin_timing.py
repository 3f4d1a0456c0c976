"""sim-marlin runs motion with the analyser's planner: a job takes the time it was estimated,
and the driver reports it finished no earlier than the motion ends."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import pytest

from drivers.base import EventKind, Program
from drivers.sim.marlin import SimMarlinDriver
from microfactory.analysis import analyse_gcode
from tests.drivers.marlin.marlin_helpers import EventLog

pytestmark = pytest.mark.timeout(60)


def print_like_program() -> str:
    """About 10 s: a slow start (M201/M204), short extrusions round a circle, then travel."""
    lines = ["G21", "G90", "M83", "M201 X500 Y500 Z100 E2000", "M204 P400 T600"]
    lines.append("G0 X125 Y100 F6000")
    lines.append("G1 F1200")
    for k in range(120):  # 1.3 mm chords of a 50 mm circle at 20 mm/s
        a = 2 * math.pi * (k + 1) / 120
        lines.append(f"G1 X{100 + 25 * math.cos(a):.3f} Y{100 + 25 * math.sin(a):.3f} E0.1")
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
