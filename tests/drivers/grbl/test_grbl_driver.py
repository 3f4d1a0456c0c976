"""The grbl driver against sim-grbl on a real pty."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from drivers.base import (
    DriverError,
    Event,
    EventKind,
    FirmwareError,
    MachineBusy,
    MachineState,
    Program,
)
from drivers.grbl import CommandRefused
from drivers.registry import create_driver
from drivers.sim.grbl import GrblSimulator, SimGrblDriver
from tests import samples

SHARED = samples.GCODE


def sample(name: str) -> Program:
    """Load one of the shared sample programs."""
    for path in (SHARED / "cnc" / name, SHARED / "laser" / name):
        if path.is_file():
            return Program.from_file(path)
    pytest.skip(f"sample program {name} not found under {SHARED}")
    raise AssertionError  # unreachable: skip raises


class EventLog:
    """Every event a driver publishes, with bounded waits for the ones a test expects."""

    def __init__(self, driver: SimGrblDriver) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(driver))

    async def _run(self, driver: SimGrblDriver) -> None:
        async for event in driver.events():
            self.events.append(event)
            self._changed.set()

    async def started(self) -> None:
        """Let the subscription register before the test acts."""
        for _ in range(3):
            await asyncio.sleep(0)

    def kinds(self) -> list[EventKind]:
        """Return the kinds seen so far, status and log events left out."""
        return [e.kind for e in self.events if e.kind not in (EventKind.STATUS, EventKind.LOG)]

    async def wait_for(self, *kinds: EventKind, within: float = 20.0) -> Event:
        """Return the first event of one of `kinds`, waiting at most `within` s."""
        async with asyncio.timeout(within):
            while True:
                for e in self.events:
                    if e.kind in kinds:
                        return e
                self._changed.clear()
                await self._changed.wait()

    async def close(self) -> None:
        """Stop listening."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


Factory = Callable[..., Awaitable[tuple[SimGrblDriver, EventLog]]]


def sim_of(driver: SimGrblDriver) -> GrblSimulator:
    """Return the driver's simulator (thread isolation)."""
    assert driver.simulator is not None
    return driver.simulator


async def wait_until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Poll a condition every 20 ms, failing after `within` s."""
    async with asyncio.timeout(within):
        # Polling: the conditions read driver snapshots that no single event announces.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@pytest.fixture
async def make_grbl() -> AsyncIterator[Factory]:
    """Connect sim-grbl drivers with the given settings; close them after the test."""
    made: list[tuple[SimGrblDriver, EventLog]] = []

    async def factory(**settings: Any) -> tuple[SimGrblDriver, EventLog]:
        settings.setdefault("speed_factor", 50.0)
        driver = SimGrblDriver(settings)
        log = EventLog(driver)
        await log.started()
        made.append((driver, log))
        async with asyncio.timeout(15):
            await driver.connect()
        return driver, log

    yield factory
    for driver, log in made:
        await log.close()
        await driver.close()


pytestmark = pytest.mark.timeout(40)


def program(*lines: str, name: str = "test.nc") -> Program:
    """Build a program from lines."""
    return Program.from_text(name, "\n".join(lines))


def long_cut(n: int = 40, feed: int = 300) -> Program:
    """A program of `n` 2 mm moves at `feed` mm/min (about 0.4 s each at 1x)."""
    lines = ["G21 G90", f"G1 X0 Y0 F{feed}"]
    lines += [f"G1 X{2 * (i + 1)}.000 Y{i % 2}.000" for i in range(n)]
    return program(*lines, name="long-cut.nc")


# -- boot ---------------------------------------------------------------------------------


async def test_registry_knows_both_names() -> None:
    assert isinstance(create_driver("sim-grbl", {}), SimGrblDriver)
    with pytest.raises(DriverError, match="unknown grbl settings: bogus"):
        create_driver("grbl", {"port": "/dev/null", "bogus": 1})


async def test_boot_idle(make_grbl: Factory) -> None:
    driver, _ = await make_grbl()
    status = await driver.status()
    assert status.state is MachineState.IDLE
    assert status.firmware == "Grbl 1.1h"
    assert driver.firmware == "VER:1.1h.20190825:"
    assert status.extra["grbl_state"] == "Idle"
    assert status.extra["buffer"] == {"planner_free": 15, "rx_free": 128}


async def test_boot_without_banner_sends_soft_reset(make_grbl: Factory) -> None:
    driver, _ = await make_grbl(dtr_reset=False, boot_timeout_s=0.3)
    assert (await driver.status()).state is MachineState.IDLE
    assert sim_of(driver).realtime[0] == 0x18


async def test_boot_locked_then_unlock(make_grbl: Factory) -> None:
    driver, _ = await make_grbl(homing=True)
    status = await driver.status()
    assert status.state is MachineState.ERROR
    assert status.message == "locked: home ($H) or unlock ($X)"
    with pytest.raises(FirmwareError, match="locked"):
        await driver.start(program("G0 X1"))
    with pytest.raises(CommandRefused, match="GRBL refused `G0 X1`") as refused:
        await driver.send("G0 X1")
    assert refused.value.reply == ["error:9"]
    assert await driver.unlock() == ["[MSG:Caution: Unlocked]", "ok"]
    assert (await driver.status()).state is MachineState.IDLE


async def test_boot_locked_then_home(make_grbl: Factory) -> None:
    driver, _ = await make_grbl(homing=True)
    assert await driver.home() == ["ok"]
    status = await driver.status()
    assert status.state is MachineState.IDLE
    assert status.machine_position == {"X": -1.0, "Y": -1.0, "Z": -1.0}


async def test_no_controller_is_offline() -> None:
    driver = create_driver("grbl", {"port": "/dev/does-not-exist"})
    with pytest.raises(DriverError, match="cannot open serial port"):
        await driver.connect()
    status = await driver.status()
    assert status.state is MachineState.OFFLINE
    assert "cannot open serial port /dev/does-not-exist" in status.message


# -- send() -----------------------------------------------------------------------------


async def test_send_returns_reply_lines(make_grbl: Factory) -> None:
    driver, _ = await make_grbl()
    assert await driver.send("$G") == ["[GC:G0 G54 G17 G21 G90 G94 M5 M9 T0 F0 S0]", "ok"]
    with pytest.raises(CommandRefused, match="GRBL refused `G1 X1`") as refused:
        await driver.send("G1 X1")
    assert refused.value.reply == ["error:22"]
    with pytest.raises(CommandRefused, match="Unsupported or invalid g-code command"):
        await driver.send("M105")  # a Marlin command: GRBL answers error:20
    settings = await driver.send("$$")
    assert settings[0] == "$0=10"
    assert settings[-1] == "ok"
    report = await driver.send("?")
    assert report[0].startswith("<Idle|MPos:")
    with pytest.raises(DriverError, match="line buffer"):
        await driver.send("G1 X" + "1" * 80)


async def test_send_check_mode_toggle_waits_for_reset(make_grbl: Factory) -> None:
    driver, _ = await make_grbl()
    assert await driver.send("$C") == ["[MSG:Enabled]", "ok"]
    assert await driver.send("$C") == ["[MSG:Disabled]", "ok"]
    assert sim_of(driver).resets >= 2  # power-on, then the check-mode exit
    assert (await driver.status()).extra["grbl_state"] == "Idle"


# -- streaming --------------------------------------------------------------------------


async def test_stream_pocket_and_contour(make_grbl: Factory) -> None:
    driver, log = await make_grbl(speed_factor=100.0)
    prog = sample("pocket-and-contour.nc")
    await driver.start(prog)
    finished = await log.wait_for(EventKind.FINISHED, EventKind.FAILED, within=30)
    assert finished.kind is EventKind.FINISHED, finished.data
    sim = sim_of(driver)
    assert sim.executed == list(prog.lines)
    assert sim.max_in_flight <= 127
    assert driver._cc.max_used <= 127
    assert sim.rx_overflow_bytes == 0
    status = await driver.status()
    assert status.state is MachineState.IDLE
    assert status.progress is not None
    assert status.progress.lines_acked == status.progress.lines_total == len(prog.lines)
    assert status.progress.last_line == "M30"
    assert status.position == {"X": 0.0, "Y": 0.0, "Z": 5.0}
    assert log.kinds()[0] is EventKind.STARTED


async def test_stream_laser_spiral_fills_the_buffer(make_grbl: Factory) -> None:
    driver, log = await make_grbl(speed_factor=20.0)
    prog = sample("laser-spiral.nc")
    await driver.start(prog)
    finished = await log.wait_for(EventKind.FINISHED, EventKind.FAILED, within=30)
    assert finished.kind is EventKind.FINISHED, finished.data
    sim = sim_of(driver)
    assert sim.executed == list(prog.lines)
    assert sim.rx_overflow_bytes == 0
    # Character counting keeps the buffer full but never over 127 bytes.
    assert 100 < sim.max_in_flight <= 127
    assert driver._cc.max_used <= 127


async def test_send_wait_streaming_has_one_line_in_flight(make_grbl: Factory) -> None:
    driver, log = await make_grbl(speed_factor=100.0, streaming="send-wait")
    prog = sample("pocket-and-contour.nc")
    await driver.start(prog)
    finished = await log.wait_for(EventKind.FINISHED, EventKind.FAILED, within=30)
    assert finished.kind is EventKind.FINISHED, finished.data
    assert sim_of(driver).executed == list(prog.lines)
    assert sim_of(driver).max_in_flight == max(len(line) + 1 for line in prog.lines)


async def test_status_while_running(make_grbl: Factory) -> None:
    driver, log = await make_grbl(speed_factor=5.0)
    await driver.start(long_cut())
    await wait_until(lambda: driver._status.extra.get("grbl_state") == "Run")
    status = await driver.status()
    assert status.state is MachineState.RUNNING
    assert status.extra["buffer"]["planner_free"] < 15
    assert status.feed_mm_min == 300.0
    assert status.progress is not None
    assert status.progress.lines_sent > 0
    with pytest.raises(MachineBusy):
        await driver.send("G0 X0")
    with pytest.raises(MachineBusy):
        await driver.start(long_cut())
    assert (await driver.send("?"))[0].startswith("<Run|")
    driver.override_feed(20)
    await wait_until(lambda: (driver._status.extra.get("overrides") or {}).get("feed") == 120)
    await driver.cancel()
    assert (await log.wait_for(EventKind.CANCELLED)).kind is EventKind.CANCELLED


async def test_eeprom_commands_are_sent_alone(make_grbl: Factory) -> None:
    driver, log = await make_grbl(speed_factor=100.0)
    prog = program(
        "G21 G90 G1 F600",
        *[f"G1 X{i}.5 Y{i}" for i in range(10)],
        "G10 L20 P1 X0 Y0",
        *[f"G1 X{i}.5 Y{i}" for i in range(10)],
        "$110=600",
        "G28.1",
        *[f"G1 X{i}.5 Y{i}" for i in range(10)],
        "G10 L2 P2 X5",
        "G1 X1 Y1",
    )
    await driver.start(prog)
    finished = await log.wait_for(EventKind.FINISHED, EventKind.FAILED, within=30)
    assert finished.kind is EventKind.FINISHED, finished.data
    sim = sim_of(driver)
    assert sim.eeprom_violations == []
    assert sim.settings[110] == 600
    assert sim.coord_systems[1] == (5.0, 0.0, 0.0)
    assert [r for _, r in sim.replies if r != "ok"] == []
    assert sim.executed == [line for line in prog.lines if not line.startswith("$")]


# -- failures ---------------------------------------------------------------------------


async def test_error_stops_the_job_safely(make_grbl: Factory) -> None:
    driver, log = await make_grbl(speed_factor=5.0)
    cut = long_cut(30)
    lines = list(cut.lines)
    lines.insert(6, "G1 X5 Y5 F600 P1")  # error:36, after motion is under way
    await driver.start(program(*lines))
    failed = await log.wait_for(EventKind.FAILED, EventKind.FINISHED, within=30)
    assert failed.kind is EventKind.FAILED
    assert failed.data["line_number"] == 7
    assert failed.data["line"] == "G1 X5 Y5 F600 P1"
    assert failed.data["code"] == 36
    assert failed.data["meaning"] == "Unused value words found in block."
    assert "line 7" in failed.data["reason"]
    assert "error:36 (Unused value words found in block.)" in failed.data["reason"]
    sim = sim_of(driver)
    # Buffered lines would have kept running: the driver held, then reset, without ALARM:3.
    assert 0x21 in sim.realtime
    assert sim.realtime.index(0x18) > sim.realtime.index(0x21)
    assert sim.alarms == []
    assert len(sim.executed) < len(lines) - 1
    status = await driver.status()
    assert status.state is MachineState.IDLE
    assert "error:36" in status.message


async def test_error_without_stop_on_error_continues(make_grbl: Factory) -> None:
    driver, log = await make_grbl(speed_factor=100.0, stop_on_error=False)
    await driver.start(program("G21", "G1 X1", "G1 X2 F600", "G0 X0"))
    finished = await log.wait_for(EventKind.FINISHED, EventKind.FAILED)
    assert finished.kind is EventKind.FINISHED
    assert finished.data["errors"] == [{"line_number": 2, "line": "G1 X1", "code": 22}]
    assert sim_of(driver).executed == ["G21", "G1 X2 F600", "G0 X0"]


async def test_corrupted_line_fails_the_job(make_grbl: Factory) -> None:
    driver, log = await make_grbl(speed_factor=100.0, faults={"corrupt_lines": [4]})
    await driver.start(long_cut(10))
    failed = await log.wait_for(EventKind.FAILED, EventKind.FINISHED)
    assert failed.kind is EventKind.FAILED
    assert failed.data["line_number"] == 4
    assert failed.data["code"] == 1
    assert "Letter was not found" in failed.data["meaning"]


async def test_alarm_mid_job_fails_and_locks(make_grbl: Factory) -> None:
    driver, log = await make_grbl(speed_factor=20.0, faults={"alarm_at_line": 12})
    await driver.start(long_cut(30))
    failed = await log.wait_for(EventKind.FAILED, EventKind.FINISHED)
    assert failed.kind is EventKind.FAILED
    assert failed.data["alarm"] == 1
    assert failed.data["cause"] == "alarm"
    assert "ALARM:1 (Hard limit has been triggered" in failed.data["reason"]
    assert failed.data["last_acked_line_number"] >= 12
    status = await driver.status()
    assert status.state is MachineState.ERROR
    assert "Ctrl-X" in status.message
    with pytest.raises(FirmwareError, match="reset it"):
        await driver.send("$X")
    await driver.soft_reset()
    status = await driver.status()
    assert status.state is MachineState.ERROR
    assert status.message.endswith("locked: home ($H) or unlock ($X)")
    await driver.unlock()
    assert (await driver.status()).state is MachineState.IDLE


async def test_hold_and_resume(make_grbl: Factory) -> None:
    driver, log = await make_grbl(speed_factor=10.0)
    prog = long_cut(20)
    await driver.start(prog)
    await wait_until(lambda: driver._status.extra.get("grbl_state") == "Run")
    await driver.pause()
    assert (await driver.status()).state is MachineState.PAUSED
    await wait_until(lambda: driver._status.extra.get("grbl_state") == "Hold:0")
    held = (await driver.status()).machine_position
    await asyncio.sleep(0.5)
    assert (await driver.status()).machine_position == held
    await driver.resume()
    finished = await log.wait_for(EventKind.FINISHED, EventKind.FAILED, within=30)
    assert finished.kind is EventKind.FINISHED
    assert log.kinds()[:3] == [EventKind.STARTED, EventKind.PAUSED, EventKind.RESUMED]
    assert sim_of(driver).executed == list(prog.lines)


async def test_cancel_is_a_safe_stop(make_grbl: Factory) -> None:
    driver, log = await make_grbl(speed_factor=5.0)
    await driver.start(long_cut(30))
    await wait_until(lambda: driver._status.extra.get("grbl_state") == "Run")
    await driver.cancel()
    cancelled = await log.wait_for(EventKind.CANCELLED, EventKind.FAILED)
    assert cancelled.kind is EventKind.CANCELLED
    sim = sim_of(driver)
    assert sim.alarms == []  # held to Hold:0 before the reset: no ALARM:3
    assert sim.realtime.index(0x18) > sim.realtime.index(0x21)
    status = await driver.status()
    assert status.state is MachineState.IDLE
    assert status.extra["grbl_state"] == "Idle"


async def test_emergency_stop_loses_position(make_grbl: Factory) -> None:
    driver, log = await make_grbl(speed_factor=5.0)
    await driver.start(long_cut(30))
    await wait_until(lambda: driver._status.extra.get("grbl_state") == "Run")
    await driver.emergency_stop()
    failed = await log.wait_for(EventKind.CANCELLED, EventKind.FAILED)
    assert failed.kind is EventKind.FAILED  # as Marlin's M112 and OctoPrint report it
    assert failed.data["reason"] == "emergency stop"
    assert sim_of(driver).alarms == [3]
    await wait_until(lambda: driver._status.state is MachineState.ERROR)
    assert "ALARM:3" in driver._status.message


async def test_check_mode_catches_errors_before_motion(make_grbl: Factory) -> None:
    driver, log = await make_grbl(speed_factor=100.0, check_mode=True)
    bad = program("G21 G90", "G0 X10", "M3 S1000", "G1 Y5 F0", "G1 X1", "G2 X1 F100", "M30")
    with pytest.raises(DriverError) as excinfo:
        await driver.start(bad)
    message = str(excinfo.value)
    assert "check mode found 3 error(s)" in message
    assert "line 4 `G1 Y5 F0`: error:22 (Feed rate has not yet been set" in message
    assert "line 5 `G1 X1`: error:22 (Feed rate has not yet been set" in message
    assert "line 6 `G2 X1 F100`: error:35" in message
    sim = sim_of(driver)
    assert sim.executed == []  # nothing moved
    assert sim.checked == ["G21 G90", "G0 X10", "M3 S1000", "M30"]
    assert (await driver.status()).extra["grbl_state"] == "Idle"
    assert EventKind.STARTED not in log.kinds()


async def test_check_mode_then_run(make_grbl: Factory) -> None:
    driver, log = await make_grbl(speed_factor=100.0, check_mode=True)
    prog = sample("pocket-and-contour.nc")
    await driver.start(prog)
    finished = await log.wait_for(EventKind.FINISHED, EventKind.FAILED, within=30)
    assert finished.kind is EventKind.FINISHED
    sim = sim_of(driver)
    assert sim.checked == list(prog.lines)
    assert sim.executed == list(prog.lines)


async def test_disconnect_mid_job(make_grbl: Factory) -> None:
    driver, log = await make_grbl(speed_factor=20.0, faults={"disconnect_after_line": 15})
    await driver.start(long_cut(40))
    failed = await log.wait_for(EventKind.FAILED, EventKind.FINISHED)
    assert failed.kind is EventKind.FAILED
    assert failed.data["cause"] == "link"
    assert "link lost" in failed.data["reason"]
    assert failed.data["last_acked_line_number"] == 15
    assert failed.data["last_acked_line"] == "G1 X26.000 Y0.000"
    disconnected = await log.wait_for(EventKind.DISCONNECTED)
    assert disconnected.data["reason"]
    assert disconnected.data["last_acked_line_number"] == 15
    status = await driver.status()
    assert status.state is MachineState.OFFLINE
    assert "link lost" in status.message


async def test_silence_mid_job(make_grbl: Factory) -> None:
    driver, log = await make_grbl(
        speed_factor=20.0, status_timeout_s=1.0, faults={"silence_after_line": 10}
    )
    await driver.start(long_cut(40))
    failed = await log.wait_for(EventKind.FAILED, EventKind.FINISHED)
    assert failed.kind is EventKind.FAILED
    assert "stopped answering" in failed.data["reason"]
    assert failed.data["last_acked_line_number"] == 10
    assert (await log.wait_for(EventKind.DISCONNECTED)).kind is EventKind.DISCONNECTED
    assert (await driver.status()).state is MachineState.OFFLINE


async def test_dropped_line_is_detected(make_grbl: Factory) -> None:
    driver, log = await make_grbl(
        speed_factor=100.0, reply_timeout_s=1.0, faults={"drop_lines": [5]}
    )
    await driver.start(long_cut(10))
    failed = await log.wait_for(EventKind.FAILED, EventKind.FINISHED)
    assert failed.kind is EventKind.FAILED
    assert "lost on the link" in failed.data["reason"]


async def test_program_validation(make_grbl: Factory) -> None:
    driver, _ = await make_grbl()
    with pytest.raises(DriverError, match=r"line 2 .* line buffer"):
        await driver.start(program("G21", "G1 X" + "1" * 80))
    with pytest.raises(DriverError, match="real-time"):
        await driver.start(program("G21", "M117 done!"))


async def test_homing_inside_a_program(make_grbl: Factory) -> None:
    # 2 s of homing at speed_factor 1 with no status reports: longer than the watchdog.
    driver, log = await make_grbl(speed_factor=1.0, homing=True, status_timeout_s=1.0)
    await driver.unlock()
    prog = program("$H", "G21 G90", "G0 X1")
    await driver.start(prog)
    finished = await log.wait_for(EventKind.FINISHED, EventKind.FAILED, within=30)
    assert finished.kind is EventKind.FINISHED, finished.data
    assert sim_of(driver).executed == ["G21 G90", "G0 X1"]
    assert (await driver.status()).machine_position == {"X": 1.0, "Y": -1.0, "Z": -1.0}


async def test_process_isolation(make_grbl: Factory) -> None:
    driver, log = await make_grbl(speed_factor=100.0, isolation="process")
    assert driver.simulator is None
    assert (await driver.status()).state is MachineState.IDLE
    await driver.start(program("G21 G90", "G1 X5 F600", "G0 X0"))
    finished = await log.wait_for(EventKind.FINISHED, EventKind.FAILED)
    assert finished.kind is EventKind.FINISHED
