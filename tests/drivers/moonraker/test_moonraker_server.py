"""The moonraker driver against the real Moonraker 0.11 server, with Klippy emulated behind it.

Moonraker is the real server (HTTP, websocket JSON-RPC, file manager); only Klippy is
emulated (tests/peers/klippy_emulator.py, which lists its limits).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from drivers.base import AuthFailed, DriverError, EventKind, MachineOffline, MachineState, Program
from drivers.moonraker import MoonrakerDriver
from drivers.planner import limits_from_dict
from tests.drivers.octoprint.octoprint_helpers import (
    EventLog,
    heated_program,
    in_state,
    wait_status,
)
from tests.peers.moonraker_server import MoonrakerServer
from tests.peers.octoprint_server import free_port

pytestmark = pytest.mark.slow

MakeDriver = Callable[..., MoonrakerDriver]


def program(moves: int, name: str = "test part.gcode") -> Program:
    return heated_program(moves, 205, name)


async def test_a_job_runs_to_finished_with_live_status(
    make_driver: MakeDriver, moonraker: MoonrakerServer
) -> None:
    driver = make_driver()
    await driver.connect()
    status = await driver.status()
    assert status.state is MachineState.IDLE, status.message
    assert status.extra["klippy_state"] == "ready"
    async with EventLog(driver) as log:
        await driver.start(program(300))
        started = await log.wait_for(EventKind.STARTED)
        name = started.data["file"]
        assert name.startswith("mf-test-part-")
        assert name.endswith(".gcode")
        # Moonraker stored the upload in its gcodes folder, where Klippy printed it from.
        assert (moonraker.gcodes / name).is_file()
        # The program's M104 reaches the status pushed over the websocket.
        running = await wait_status(
            driver,
            lambda s: s.temperatures.get("T") is not None and s.temperatures["T"].target == 205,
        )
        assert running.state in (MachineState.RUNNING, MachineState.IDLE)
        finished = await log.wait_for(EventKind.FINISHED)
    assert finished.data["file"] == name
    assert finished.data["progress"].percent == 100.0
    assert finished.data["progress"].lines_total == 302
    status = await wait_status(driver, in_state(MachineState.IDLE))
    assert status.extra["print_state"] == "complete"
    assert EventKind.FAILED not in log.kinds()


async def test_motion_limits_come_from_klippers_configfile(make_driver: MakeDriver) -> None:
    driver = make_driver()
    await driver.connect()
    limits = driver.motion_limits
    assert limits is not None
    # The emulated [printer]: max_velocity 300, max_accel 3000, square_corner_velocity 5.
    assert limits["max_feedrate"][:2] == [300.0, 300.0]
    assert limits["max_acceleration"][:2] == [3000.0, 3000.0]
    assert limits["print_acceleration"] == 3000.0
    assert limits["junction_deviation"] == pytest.approx(25 * (2**0.5 - 1) / 3000)
    assert "configfile" in limits["source"]
    # The planner takes them as they are.
    assert limits_from_dict(limits).max_acceleration[0] == 3000.0


async def test_pause_resume_and_cancel(make_driver: MakeDriver) -> None:
    driver = make_driver()
    await driver.connect()
    async with EventLog(driver) as log:
        await driver.start(program(20000))  # two minutes: it will not finish
        await wait_status(driver, lambda s: s.progress is not None and s.progress.percent > 0)
        await driver.pause()
        await log.wait_for(EventKind.PAUSED)
        paused = await wait_status(driver, in_state(MachineState.PAUSED))
        assert paused.progress is not None
        at_pause = paused.progress.percent
        assert 0 < at_pause < 100
        await driver.resume()
        await log.wait_for(EventKind.RESUMED)
        # Printing goes on from where it paused.
        await wait_status(
            driver,
            lambda s: (
                s.state is MachineState.RUNNING
                and s.progress is not None
                and s.progress.percent > at_pause
            ),
        )
        await driver.cancel()
        cancelled = await log.wait_for(EventKind.CANCELLED)
    assert cancelled.data["reason"] == "cancelled"
    await wait_status(driver, in_state(MachineState.IDLE))
    assert EventKind.FINISHED not in log.kinds()


async def test_klippy_shutdown_mid_job_fails_it_with_klippys_message(
    make_driver: MakeDriver, moonraker: MoonrakerServer
) -> None:
    assert moonraker.klippy is not None
    driver = make_driver()
    await driver.connect()
    async with EventLog(driver) as log:
        await driver.start(program(20000))
        await wait_status(driver, in_state(MachineState.RUNNING))
        moonraker.klippy.shutdown("MCU 'mcu' shutdown: Timer too close")
        failed = await log.wait_for(EventKind.FAILED)
    assert failed.data["reason"] == "Klippy shutdown: MCU 'mcu' shutdown: Timer too close"
    status = await wait_status(driver, in_state(MachineState.ERROR))
    assert "Timer too close" in status.message
    # A new job is refused while Klippy is shut down, saying why.
    with pytest.raises(DriverError, match="Timer too close"):
        await driver.start(program(10))
    # FIRMWARE_RESTART brings Klippy back.
    await driver.reset()
    await wait_status(driver, in_state(MachineState.IDLE))


async def test_a_moonraker_restart_mid_job_is_survived(
    make_driver: MakeDriver, moonraker: MoonrakerServer
) -> None:
    driver = make_driver()
    await driver.connect()
    async with EventLog(driver) as log:
        await driver.start(program(800))  # about 5 s
        await wait_status(driver, in_state(MachineState.RUNNING))
        await asyncio.to_thread(moonraker.stop_moonraker)
        gone = await wait_status(driver, in_state(MachineState.OFFLINE))
        assert "websocket" in gone.message
        assert driver.job_file is not None  # Klippy prints on: the job is not given up
        await asyncio.to_thread(moonraker.start_moonraker)
        # The driver reconnects by itself and follows the print to its end.
        finished = await log.wait_for(EventKind.FINISHED)
    assert finished.data["progress"].percent == 100.0
    assert EventKind.FAILED not in log.kinds()


async def test_the_emergency_stop_shuts_klippy_down_and_fails_the_job(
    make_driver: MakeDriver, moonraker: MoonrakerServer
) -> None:
    assert moonraker.klippy is not None
    driver = make_driver()
    await driver.connect()
    async with EventLog(driver) as log:
        await driver.start(program(20000))
        await driver.send("M112")  # as the dashboard's button does
        failed = await log.wait_for(EventKind.FAILED)
    assert "emergency stop" in failed.data["reason"] or "webhooks request" in failed.data["reason"]
    status = await wait_status(driver, in_state(MachineState.ERROR))
    assert "Klippy shutdown" in status.message
    assert moonraker.klippy.state == "shutdown"
    await driver.reset()
    await driver.connect()  # connecting again replaces the websocket, it does not add one
    await wait_status(driver, in_state(MachineState.IDLE))


async def test_a_klippy_restart_mid_job_fails_it(
    make_driver: MakeDriver, moonraker: MoonrakerServer
) -> None:
    assert moonraker.klippy is not None
    driver = make_driver()
    await driver.connect()
    async with EventLog(driver) as log:
        await driver.start(program(20000))
        await wait_status(driver, in_state(MachineState.RUNNING))
        moonraker.klippy.reset()  # RESTART from the printer's own screen: the print is gone
        failed = await log.wait_for(EventKind.FAILED)
    assert "is no longer printing" in failed.data["reason"]
    await wait_status(driver, in_state(MachineState.IDLE))


async def test_a_short_program_is_reported_started_before_finished(
    make_driver: MakeDriver,
) -> None:
    driver = make_driver()
    await driver.connect()
    async with EventLog(driver) as log:
        await driver.start(program(1))
        await log.wait_for(EventKind.FINISHED)
    assert log.kinds() == [EventKind.STARTED, EventKind.FINISHED]


async def test_after_our_restart_a_new_driver_reattaches_to_the_print(
    make_driver: MakeDriver,
) -> None:
    first = make_driver()
    await first.connect()
    await first.start(program(400))  # about 2.5 s
    name = first.job_file
    await first.close()  # we "restart": Klippy prints on
    again = make_driver()
    await again.connect()
    assert await again.attach("some-other-file.gcode", lines_total=402) is None
    async with EventLog(again) as log:
        progress = await again.attach(name, lines_total=402)
        assert progress is not None
        assert progress.lines_total == 402
        assert again.job_file == name
        finished = await log.wait_for(EventKind.FINISHED)
    assert finished.data["file"] == name
    # A print that completed while we were away is reported finished at once.
    late = make_driver()
    await late.connect()
    async with EventLog(late) as log:
        done = await late.attach(name, lines_total=402)
        assert done is not None
        assert done.percent == 100.0
        await log.wait_for(EventKind.FINISHED)
    assert late.job_file is None
    # Without a file name, only a running print is followed.
    assert await late.attach(None) is None


async def test_gcode_goes_through_and_is_refused_during_a_print(make_driver: MakeDriver) -> None:
    driver = make_driver()
    await driver.connect()
    assert await driver.send("M140 S60") == []
    status = await wait_status(
        driver, lambda s: s.temperatures.get("B") is not None and s.temperatures["B"].target == 60
    )
    assert status.state is MachineState.IDLE
    await driver.start(program(20000))
    with pytest.raises(DriverError, match="refused: the printer is printing"):
        await driver.send("G28")
    await driver.cancel()


async def test_a_wrong_url_gives_a_clear_error(
    make_driver: MakeDriver, moonraker: MoonrakerServer
) -> None:
    nothing = make_driver(url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(MachineOffline, match="connection refused") as offline:
        await nothing.connect()
    assert "Traceback" not in str(offline.value)
    assert (await nothing.status()).state is MachineState.OFFLINE
    # Moonraker is there, but not at this path (a reverse proxy prefix that is wrong).
    wrong_path = make_driver(url=f"{moonraker.url}/moonraker")
    with pytest.raises(DriverError, match=r"HTTP 404.*is the URL right\?"):
        await wrong_path.connect()


async def test_an_api_key_is_sent_and_a_wrong_one_gives_a_clear_error(
    make_driver: MakeDriver, moonraker: MoonrakerServer
) -> None:
    # This host is a trusted client, which may read Moonraker's API key.
    async with httpx.AsyncClient(base_url=moonraker.url) as client:
        key = (await client.get("/access/api_key")).json()["result"]
    keyed = make_driver(api_key=key)
    await keyed.connect()
    assert (await keyed.status()).state is MachineState.IDLE
    # A wrong key is refused even from a trusted address, and the message says what to do.
    wrong = make_driver(api_key="0123456789abcdef-wrong")
    with pytest.raises(AuthFailed, match=r"HTTP 401.*api_key") as refused:
        await wrong.connect()
    assert "0123456789abcdef-wrong" not in str(refused.value)
    assert (await wrong.status()).state is MachineState.OFFLINE


async def test_moonrakers_metadata_of_a_sliced_file_and_its_thumbnails(
    make_driver: MakeDriver, moonraker: MoonrakerServer
) -> None:
    from tests.samples import data_file

    sample = data_file("gcode", "fdm", "klipper-cylinder.gcode")
    async with httpx.AsyncClient(base_url=moonraker.url) as client:
        uploaded = await client.post(
            "/server/files/upload",
            files={"file": ("cylinder.gcode", sample.read_bytes())},
            data={"root": "gcodes"},
        )
    assert uploaded.status_code == 201, uploaded.text
    driver = make_driver()
    await driver.connect()
    meta = await driver.file_metadata("cylinder.gcode")
    assert meta is not None
    # What Moonraker's own metadata extraction read from PrusaSlicer's header and footer.
    assert meta["slicer"] == "PrusaSlicer"
    assert meta["slicer_version"] == "2.5.0"
    assert meta["estimated_time_s"] == 268.0
    assert meta["filament_mm"] == pytest.approx(238.52)
    assert meta["filament_g"] == pytest.approx(0.71)
    assert meta["layer_height_mm"] == 0.2
    # The file's QOI thumbnail became a PNG, and Moonraker added a 32x32 one.
    sizes = {(t["width"], t["height"]): t["relative_path"] for t in meta["thumbnails"]}
    assert set(sizes) == {(64, 64), (32, 32)}
    png = await driver.thumbnail(sizes[(64, 64)])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert await driver.file_metadata("no-such-file.gcode") is None
    with pytest.raises(DriverError, match="refusing the thumbnail path"):
        await driver.thumbnail("../config/moonraker.conf.png")
