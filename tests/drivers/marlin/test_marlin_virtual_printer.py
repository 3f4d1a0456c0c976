"""Conformance: the marlin driver against OctoPrint's VirtualPrinter, an independent Marlin.

The bridge (tests/peers/virtual_printer_bridge.py) runs VirtualPrinter in OctoPrint's own
venv and serves it on a pty. Its replies go out as VirtualPrinter makes them, most without a
newline, so these tests also cover the driver's handling of glued replies. The last tests
record where VirtualPrinter and sim-marlin (which follows Marlin's source) differ.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.base import EventKind, MachineState, Program
from drivers.marlin import MarlinDriver, format_line, split_replies
from drivers.serial_io import AsyncSerialLink
from drivers.sim.marlin import MarlinSimulator
from tests.drivers.marlin.marlin_helpers import Bridge, EventLog, moves_program, start_bridge

pytestmark = pytest.mark.slow


async def bridge(tmp_path: Path, bridges: list[Bridge], *args: str) -> Bridge:
    started = await asyncio.to_thread(start_bridge, tmp_path, "--motion-scale", "0", *args)
    bridges.append(started)
    return started


async def stream(driver: MarlinDriver, program: Program, within: float = 60.0) -> EventKind:
    events = await EventLog(driver).started()
    await driver.start(program)
    end = await events.wait(EventKind.FINISHED, EventKind.FAILED, within=within)
    events.close()
    return end.kind


OWN = ("M110", "M115", "M155", "M105", "M503")  # lines the driver sends on its own


#: The driver ends every job with M400 and reports it finished at its ok (the motion is over).
MOTION_END = ["M400"]


def program_lines(executed: list[str]) -> list[str]:
    """Drop what the driver sent on its own (handshake, anchors, polls, M503)."""
    return [c for c in executed if c.split(" ", 1)[0] not in OWN]


async def test_handshake_and_stream_with_unterminated_replies(
    tmp_path: Path, bridges: list[Bridge]
) -> None:
    peer = await bridge(tmp_path, bridges, "--simulated-errors", "none")
    driver = MarlinDriver({"port": peer.path})
    try:
        await asyncio.wait_for(driver.connect(), 15)
        status = await driver.status()
        assert status.firmware == "Virtual Marlin 1.0"
        assert driver.capabilities["AUTOREPORT_TEMP"] is True
        assert driver._loose_newlines  # VirtualPrinter's "ok" comes without "\n"
        reply = await driver.send("M105")
        assert reply[-1].startswith("ok T:21.30")
        program = moves_program(500)
        assert await stream(driver, program) is EventKind.FINISHED
        assert program_lines(peer.executed()) == [*program.lines, *MOTION_END]
        assert peer.executed()[:3] == ["M115", "M155 S2", "M503"]  # M110 is not "executed"
        assert driver.stats["resends"] == 0
    finally:
        await driver.close()


async def test_reads_the_motion_limits_from_m503(tmp_path: Path, bridges: list[Bridge]) -> None:
    peer = await bridge(tmp_path, bridges)
    driver = MarlinDriver({"port": peer.path})
    try:
        await asyncio.wait_for(driver.connect(), 15)
        limits = driver.motion_limits
        # VirtualPrinter's virtual EEPROM defaults, as its M503 reports them
        assert limits["max_feedrate"] == (500.0, 500.0, 5.0, 25.0)
        assert limits["max_acceleration"] == (2000.0, 2000.0, 10.0, 74.0)
        assert limits["print_acceleration"] == 750.0
        assert limits["retract_acceleration"] == 1000.0
        assert limits["travel_acceleration"] == 300.0
        assert limits["max_jerk"] == (10.0, 10.0, 0.3, 5.0)  # it reports J0: jerk is in use
        assert limits["junction_deviation"] is None
        assert limits["linear_advance_k"] == 0.01
        assert "planner_blocks" not in limits  # neither M115 nor ADVANCED_OK tells
        assert limits["source"] == f"M503 on {peer.path}"
        assert limits["read_at"].endswith("+00:00")
    finally:
        await driver.close()


@pytest.mark.parametrize("window", [4, 1])
async def test_virtual_printers_default_errors_as_shipped(
    tmp_path: Path, bridges: list[Bridge], window: int
) -> None:
    """100:resend, 105:resend_with_timeout, 110:missing_lineno, 115:checksum_mismatch.

    resend_with_timeout asks for line 105, then swallows the next line and claims to have
    105: a host that believes it loses line 105 (OctoPrint does). The driver re-anchors the
    firmware's counter with M110 (after a blank line, which is what gets swallowed) and
    sends the line again, so every line runs exactly once.
    """
    peer = await bridge(tmp_path, bridges)  # VirtualPrinter's default simulated errors
    driver = MarlinDriver({"port": peer.path, "window": window})
    try:
        await asyncio.wait_for(driver.connect(), 15)
        program = moves_program(300)
        assert await stream(driver, program) is EventKind.FINISHED
        assert program_lines(peer.executed()) == [*program.lines, *MOTION_END]
        assert driver.stats["resends"] >= 4
        # Its errors name no line, so its counter is re-anchored after each fault. The
        # line resend_with_timeout swallows is the blank line sent ahead of each anchor, so
        # no line waits for a timeout.
        assert driver.stats["anchors"] >= 4
        assert driver.stats["timeouts"] == 0
        if window > 1:
            assert driver.stats["stale_resends"] >= 3  # lines in flight behind each error
    finally:
        await driver.close()


@pytest.mark.parametrize("seed", [5, 11])
async def test_default_errors_and_random_corruption(
    tmp_path: Path, bridges: list[Bridge], seed: int
) -> None:
    """VirtualPrinter as shipped plus 2 % damaged lines: its drifting resend counter asks
    for lines past the damaged one; the driver does not skip them."""
    peer = await bridge(tmp_path, bridges, "--corrupt-rate", "0.02", "--seed", str(seed))
    driver = MarlinDriver({"port": peer.path})
    try:
        await asyncio.wait_for(driver.connect(), 15)
        program = moves_program(1500)
        assert await stream(driver, program, within=120) is EventKind.FINISHED
        assert program_lines(peer.executed()) == [*program.lines, *MOTION_END]
        assert driver.stats["resends"] >= 10
    finally:
        await driver.close()


async def test_terminated_replies_and_advanced_ok(tmp_path: Path, bridges: list[Bridge]) -> None:
    peer = await bridge(
        tmp_path,
        bridges,
        "--terminate",
        "--set",
        'okFormatString="ok N{lastN} P{buffer} B{buffer}"',
        "--set",
        'capabilities={"AUTOREPORT_TEMP": true, "ADVANCED_OK": true, "EMERGENCY_PARSER": true}',
    )
    driver = MarlinDriver({"port": peer.path})
    try:
        await asyncio.wait_for(driver.connect(), 15)
        assert driver.capabilities["ADVANCED_OK"] is True
        assert not driver._loose_newlines
        program = moves_program(500)
        assert await stream(driver, program) is EventKind.FINISHED
        assert driver._learned_slots is not None
        assert program_lines(peer.executed()) == [*program.lines, *MOTION_END]
    finally:
        await driver.close()


async def test_emergency_stop(tmp_path: Path, bridges: list[Bridge]) -> None:
    peer = await bridge(tmp_path, bridges)
    driver = MarlinDriver({"port": peer.path})
    try:
        await asyncio.wait_for(driver.connect(), 15)
        events = await EventLog(driver).started()
        await driver.start(moves_program(3000))
        await driver.emergency_stop()
        assert (await events.wait(EventKind.FAILED)).data["reason"].startswith("emergency stop")
        assert (await driver.status()).state is MachineState.ERROR
    finally:
        await driver.close()


# -- recorded differences between VirtualPrinter and Marlin (sim-marlin) ------------------


async def converse(path: str, lines: list[str], quiet: float = 0.3) -> list[str]:
    """Send raw lines one at a time; return every reply (newlines or not), "wait" left out."""
    link = AsyncSerialLink(path)
    await link.open()
    replies: list[str] = []
    try:
        for line in lines:
            link.write(line.encode() + b"\n")
            while True:  # until the peer has been quiet for `quiet` s
                try:
                    text = await link.readline(quiet)
                except TimeoutError:
                    if not link.pending_partial():
                        break
                    text = link.take_partial().decode()
                replies.extend(p for p in split_replies(text) if p != "wait")
    finally:
        link.close()
    return replies


# Line 3 arrives before line 2 (a host sending ahead), then line 2 arrives damaged.
OUT_OF_ORDER_THEN_DAMAGED = [
    format_line(0, "M110 N0"),
    format_line(1, "G1 X1"),
    format_line(3, "G1 X3"),
    format_line(2, "G1 X2").replace("X2", "X7"),
]


async def test_virtual_printer_skips_lines_after_a_checksum_error(
    tmp_path: Path, bridges: list[Bridge]
) -> None:
    """VirtualPrinter asks for `current_line + 1` after a checksum error; Marlin for last_N + 1.

    current_line also counts lines rejected as out of sequence, so after a host has sent
    ahead VirtualPrinter asks for line 3 here, skipping line 2 that it never ran. Marlin
    (and sim-marlin) ask for line 2. The driver copes with both (see the tests above).
    """
    peer = await bridge(tmp_path, bridges, "--terminate", "--simulated-errors", "none")
    vp = await converse(peer.path, OUT_OF_ORDER_THEN_DAMAGED)
    assert vp == [
        "ok",
        "ok",
        "Error: expected line 2 got 3",
        "Resend:2",
        "ok",
        "Error: Missing checksum",  # sic: a checksum mismatch is reported as missing
        "Resend:3",
        "ok",
    ]

    sim = MarlinSimulator(speed_factor=0, baud=0)
    path = await asyncio.to_thread(sim.start_in_thread)
    try:
        marlin = await converse(path, OUT_OF_ORDER_THEN_DAMAGED)
    finally:
        await asyncio.to_thread(sim.stop_thread)
    assert marlin == [
        "ok",
        "ok",
        "Error:Line Number is not Last Line Number+1, Last Line: 1",
        "Resend: 2",
        "ok",
        "Error:checksum mismatch, Last Line: 1",
        "Resend: 2",
        "ok",
    ]


async def test_other_differences_from_marlin(tmp_path: Path, bridges: list[Bridge]) -> None:
    """Record smaller differences; the driver copes with both sides of each."""
    peer = await bridge(tmp_path, bridges, "--terminate", "--simulated-errors", "none")
    sim = MarlinSimulator(speed_factor=0, baud=0)
    path = await asyncio.to_thread(sim.start_in_thread)
    try:
        probe = [format_line(0, "M110 N0"), format_line(1, "M105"), format_line(2, "M114")]
        vp = await converse(peer.path, probe)
        marlin = await converse(path, probe)
        # Temperatures: "T:21.30/ 0.00" against Marlin's "T:21.00 /0.00 ... B@:0".
        assert vp[1] == "ok T:21.30/ 0.00 B:21.30/ 0.00 @:64"
        assert marlin[1] == "ok T:21.00 /0.00 B:21.00 /0.00 @:0 B@:0"
        # M114: VirtualPrinter puts "ok" in front of the position; Marlin prints it after.
        assert vp[2].startswith("ok X:0.0 Y:0.0 Z:0.0 E:0.0 Count: A:0")
        assert marlin[2:4] == ["X:0.00 Y:0.00 Z:0.00 E:0.00 Count X:0 Y:0 Z:0", "ok"]
        # M112: VirtualPrinter echoes, Marlin reports an error.
        assert await converse(peer.path, ["M112"]) == ["echo:EMERGENCY SHUTDOWN DETECTED. KILLED."]
        assert await converse(path, ["M112"]) == ["Error:Printer halted. kill() called!"]
    finally:
        await asyncio.to_thread(sim.stop_thread)
