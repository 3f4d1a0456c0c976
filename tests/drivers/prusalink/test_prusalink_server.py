"""The prusalink driver against a PrusaLink peer speaking the v1 REST API over real HTTP.

The peer (tests/peers/prusalink_server.py) is written from PrusaLink's OpenAPI description,
with digest auth; the real PrusaLink could not print here (docs/prusalink.md says why).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from drivers.base import AuthFailed, DriverError, EventKind, MachineOffline, MachineState, Program
from drivers.prusalink import PrusaLinkDriver
from tests.drivers.octoprint.octoprint_helpers import (
    EventLog,
    heated_program,
    in_state,
    wait_status,
)
from tests.peers.octoprint_server import free_port
from tests.peers.prusalink_server import PrusaLinkServer

pytestmark = pytest.mark.slow

MakeDriver = Callable[..., PrusaLinkDriver]


def program(moves: int, name: str = "test part.gcode") -> Program:
    return heated_program(moves, 215, name)


async def test_a_job_runs_to_finished_with_live_status(
    make_driver: MakeDriver, prusalink: PrusaLinkServer
) -> None:
    driver = make_driver()
    await driver.connect()
    status = await driver.status()
    assert status.state is MachineState.IDLE, status.message
    assert status.firmware == "3.14.1-8237"
    assert status.extra["storage"] == "local"
    async with EventLog(driver) as log:
        await driver.start(program(300))
        started = await log.wait_for(EventKind.STARTED)
        name = started.data["file"]
        assert name.startswith("mf-test-part-")
        assert (prusalink.printer.storage / name).is_file()
        # The upload asked PrusaLink to print it: no separate start was needed.
        assert ("POST", f"/api/v1/files/local/{name}") not in prusalink.requests
        running = await wait_status(
            driver,
            lambda s: s.temperatures.get("T") is not None and s.temperatures["T"].target == 215,
        )
        assert running.state in (MachineState.RUNNING, MachineState.IDLE)
        finished = await log.wait_for(EventKind.FINISHED)
    assert finished.data["file"] == name
    assert finished.data["progress"].percent == 100.0
    assert finished.data["progress"].lines_total == 302
    status = await wait_status(driver, in_state(MachineState.IDLE))
    assert status.extra["prusalink_state"] == "FINISHED"
    assert EventKind.FAILED not in log.kinds()


async def test_pause_resume_and_cancel(make_driver: MakeDriver) -> None:
    driver = make_driver()
    await driver.connect()
    async with EventLog(driver) as log:
        await driver.start(program(20000))  # about two minutes: it will not finish
        await wait_status(driver, lambda s: s.progress is not None and s.progress.percent > 0)
        await driver.pause()
        await log.wait_for(EventKind.PAUSED)
        paused = await wait_status(driver, in_state(MachineState.PAUSED))
        assert paused.progress is not None
        at_pause = paused.progress.percent
        assert 0 < at_pause < 100
        assert paused.progress.eta_s is not None
        assert paused.progress.eta_s > 0
        await driver.resume()
        await log.wait_for(EventKind.RESUMED)
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
    status = await wait_status(driver, in_state(MachineState.IDLE))
    assert status.extra["prusalink_state"] == "STOPPED"
    assert EventKind.FINISHED not in log.kinds()


async def test_a_printer_error_mid_job_fails_it_with_the_printers_message(
    make_driver: MakeDriver, prusalink: PrusaLinkServer
) -> None:
    driver = make_driver()
    await driver.connect()
    async with EventLog(driver) as log:
        await driver.start(program(20000))
        await wait_status(driver, in_state(MachineState.RUNNING))
        prusalink.printer.error("HOTEND THERMAL RUNAWAY")
        failed = await log.wait_for(EventKind.FAILED)
    assert failed.data["reason"] == "printer error: HOTEND THERMAL RUNAWAY"
    status = await wait_status(driver, in_state(MachineState.ERROR))
    assert status.message == "printer error: HOTEND THERMAL RUNAWAY"
    with pytest.raises(DriverError, match="THERMAL RUNAWAY"):
        await driver.start(program(10))


async def test_attention_at_the_printer_pauses_the_job_with_its_message(
    make_driver: MakeDriver, prusalink: PrusaLinkServer
) -> None:
    driver = make_driver()
    await driver.connect()
    async with EventLog(driver) as log:
        await driver.start(program(20000))
        await wait_status(driver, in_state(MachineState.RUNNING))
        prusalink.printer.attention("Filament runout")
        paused = await log.wait_for(EventKind.PAUSED)
        assert paused.data["reason"] == "Filament runout"
        status = await wait_status(driver, in_state(MachineState.PAUSED))
        assert "needs attention" in status.message
        assert "Filament runout" in status.message
        await driver.resume()
        await log.wait_for(EventKind.RESUMED)
        await driver.cancel()
        await log.wait_for(EventKind.CANCELLED)


async def test_a_prusalink_restart_mid_job_is_survived(
    make_driver: MakeDriver, prusalink: PrusaLinkServer
) -> None:
    driver = make_driver()
    await driver.connect()
    async with EventLog(driver) as log:
        await driver.start(program(600))  # about 4 s
        await wait_status(driver, in_state(MachineState.RUNNING))
        await asyncio.to_thread(prusalink.stop)
        gone = await wait_status(driver, in_state(MachineState.OFFLINE))
        assert "connection refused" in gone.message
        await asyncio.sleep(0.5)
        await asyncio.to_thread(prusalink.start)  # new nonces: digest auth starts afresh
        await wait_status(driver, lambda s: s.state is not MachineState.OFFLINE)
        finished = await log.wait_for(EventKind.FINISHED)
    assert finished.data["progress"].percent == 100.0
    assert EventKind.FAILED not in log.kinds()


async def test_after_our_restart_a_new_driver_reattaches_to_the_print(
    make_driver: MakeDriver,
) -> None:
    first = make_driver()
    await first.connect()
    await first.start(program(500))  # about 3 s
    name = first.job_file
    await first.close()  # we "restart": the printer prints on
    again = make_driver()
    await again.connect()
    assert await again.attach("some-other-file.gcode", lines_total=502) is None
    async with EventLog(again) as log:
        progress = await again.attach(name, lines_total=502)
        assert progress is not None
        assert progress.lines_total == 502
        assert again.job_file == name
        finished = await log.wait_for(EventKind.FINISHED)
    assert finished.data["file"] == name
    # A print that finished while we were away is reported finished at once.
    late = make_driver()
    await late.connect()
    async with EventLog(late) as log:
        done = await late.attach(name, lines_total=502)
        assert done is not None
        assert done.percent == 100.0
        await log.wait_for(EventKind.FINISHED)
    assert await late.attach(None) is None


async def test_wrong_credentials_give_a_clear_error(
    make_driver: MakeDriver, prusalink: PrusaLinkServer
) -> None:
    wrong = make_driver(password="not-the-password")
    with pytest.raises(AuthFailed, match=r"PrusaLink refused the credentials \(HTTP 401\)") as e:
        await wrong.connect()
    assert "not-the-password" not in str(e.value)
    assert (await wrong.status()).state is MachineState.OFFLINE
    bad_key = make_driver(username=None, password=None, api_key="wrong-key-0123")
    with pytest.raises(AuthFailed, match=r"refused the credentials \(HTTP 403\)"):
        await bad_key.connect()
    # The right API key works instead of the password.
    keyed = make_driver(username=None, password=None, api_key=prusalink.api_key)
    await keyed.connect()
    assert (await keyed.status()).state is MachineState.IDLE
    nothing = make_driver(url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(MachineOffline, match="connection refused"):
        await nothing.connect()


async def test_an_upload_refusal_gives_a_clear_reason_and_starts_nothing(
    make_driver: MakeDriver, prusalink: PrusaLinkServer
) -> None:
    driver = make_driver()
    await driver.connect()
    prusalink.printer.free_space = 100  # bytes
    with pytest.raises(DriverError, match=r"HTTP 413\): the printer's storage has no room") as e:
        await driver.start(program(50))
    assert "Not enough space in storage" in str(e.value)
    assert driver.job_file is None
    assert prusalink.printer.job_id is None
    status = await wait_status(driver, in_state(MachineState.IDLE))
    assert status.extra["job_file"] is None


async def test_gcode_commands_are_refused_with_a_reason(make_driver: MakeDriver) -> None:
    driver = make_driver()
    await driver.connect()
    with pytest.raises(DriverError, match="PrusaLink's API takes no G-code commands"):
        await driver.send("G28")
