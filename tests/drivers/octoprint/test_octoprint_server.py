"""OctoPrint driver against a real OctoPrint server and its virtual printer."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from octorest import OctoRest

from drivers.base import (
    AuthFailed,
    DriverError,
    EventKind,
    MachineBusy,
    MachineState,
    Program,
)
from drivers.octoprint import OctoPrintDriver, translate_error
from tests.drivers.octoprint.octoprint_helpers import (
    WAIT_S,
    EventLog,
    in_state,
    program,
    wait_status,
)
from tests.peers.octoprint_server import OctoPrintServer, SubPathProxy

pytestmark = pytest.mark.slow

MakeDriver = Callable[..., OctoPrintDriver]


async def test_print_to_completion(make_driver: MakeDriver) -> None:
    driver = make_driver()
    async with EventLog(driver) as log:
        await driver.connect()
        status = await wait_status(driver, lambda s: {"T", "B"} <= s.temperatures.keys())
        assert status.state is MachineState.IDLE
        assert status.temperatures["B"].actual > 0

        prog = program(40)
        await driver.start(prog)
        started = await log.wait_for(EventKind.STARTED)
        file = started.data["file"]
        assert file == driver.job_file
        assert file.startswith("mf-test-part-")
        assert file.endswith(".gcode")

        finished = await log.wait_for(EventKind.FINISHED)
        assert finished.data["file"] == file
        assert finished.data["progress"].percent == 100.0
        assert finished.data["progress"].lines_total == len(prog.lines)
        status = await driver.status()
        assert status.state is MachineState.IDLE
        assert driver.job_file is None
        assert log.kinds() == [EventKind.STARTED, EventKind.FINISHED]


async def test_upload_sends_the_source_file(
    make_driver: MakeDriver, octoprint: OctoPrintServer, tmp_path: Path
) -> None:
    """A program with a source file is uploaded as written, comments and all."""
    text = "; sliced by hand\nG28\nG91\nG1 X0.5 F60\nG90\n"
    source = tmp_path / "part.gcode"
    source.write_text(text)
    driver = make_driver()
    async with EventLog(driver) as log:
        await driver.connect()
        await driver.start(Program.from_file(source))
        await log.wait_for(EventKind.FINISHED)
    assert driver.job_file is None
    job = octoprint.api("GET", "/api/job").json()
    uploaded = octoprint.api("GET", f"/downloads/files/local/{job['job']['file']['path']}")
    assert uploaded.text == text


async def test_pause_resume_cancel(make_driver: MakeDriver) -> None:
    driver = make_driver()
    async with EventLog(driver) as log:
        await driver.connect()
        prog = program(400)
        await driver.start(prog)

        # Progress rises while it prints.
        first = await wait_status(driver, lambda s: bool(s.progress and s.progress.percent > 0))
        assert first.progress is not None
        percent = first.progress.percent
        later = await wait_status(
            driver, lambda s: bool(s.progress and s.progress.percent > percent)
        )
        assert later.progress is not None
        assert later.progress.lines_total == len(prog.lines)
        assert later.progress.started_at is not None

        # Only reporting commands go through during a print.
        assert await driver.send("M105") == []
        with pytest.raises(MachineBusy, match="G28 refused"):
            await driver.send("G28")

        await driver.pause()
        assert (await driver.status()).state is MachineState.PAUSED
        await log.wait_for(EventKind.PAUSED)
        with pytest.raises(MachineBusy):
            await driver.start(program(1))

        await driver.resume()
        assert (await driver.status()).state is MachineState.RUNNING
        await log.wait_for(EventKind.RESUMED)

        await driver.cancel()
        cancelled = await log.wait_for(EventKind.CANCELLED)
        assert cancelled.data["reason"] == "cancelled"
        assert (await driver.status()).state is MachineState.IDLE
        assert log.kinds() == [
            EventKind.STARTED,
            EventKind.PAUSED,
            EventKind.RESUMED,
            EventKind.CANCELLED,
        ]

        # With nothing printing, OctoPrint's refusal comes back readable.
        with pytest.raises(DriverError, match=r"refused pausing the print \(HTTP 409\)"):
            await driver.pause()


async def test_wrong_api_key_is_auth_failed(
    make_driver: MakeDriver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = "0123456789ABCDEF0123456789ABCDEF"
    driver = make_driver(api_key=key)
    with pytest.raises(AuthFailed, match="refused the API key") as info:
        await driver.connect()
    assert key not in str(info.value)
    assert (await driver.status()).state is MachineState.OFFLINE
    assert key not in caplog.text


async def test_the_key_is_never_logged(
    make_driver: MakeDriver, octoprint: OctoPrintServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # urllib3 and requests included
    driver = make_driver()
    async with EventLog(driver) as log:
        await driver.connect()
        await driver.start(program(2))
        await log.wait_for(EventKind.FINISHED)
    assert "uploaded test part.gcode as mf-test-part-" in caplog.text
    assert octoprint.api_key not in caplog.text


async def test_unknown_printer_port_is_refused_clearly(
    make_driver: MakeDriver, octoprint: OctoPrintServer
) -> None:
    octoprint.api("POST", "/api/connection", json={"command": "disconnect"})
    driver = make_driver(printer_port="/dev/ttyNOPE")
    with pytest.raises(DriverError) as info:
        await driver.connect()
    assert str(info.value) == (
        "OctoPrint refused connecting the printer on port /dev/ttyNOPE (HTTP 400): port is invalid"
    )


async def test_printer_not_operational_is_a_state(
    make_driver: MakeDriver, octoprint: OctoPrintServer
) -> None:
    """GET /api/printer answers 409 without a printer: that is a state, not an error."""
    driver = make_driver()
    await driver.connect()
    octoprint.api("POST", "/api/connection", json={"command": "disconnect"})
    assert octoprint.api("GET", "/api/printer").status_code == 409
    status = await wait_status(driver, in_state(MachineState.OFFLINE))
    assert status.message == "OctoPrint is running but the printer is not connected"
    assert status.temperatures == {}
    assert status.extra["reachable"] is True

    await driver.connect()  # connects the printer again
    assert (await driver.status()).state is MachineState.IDLE


async def test_reattach_to_a_running_print(make_driver: MakeDriver) -> None:
    """After our restart, a new driver finds our print still running and follows it."""
    first = make_driver()
    await first.connect()
    await first.start(program(100))
    file = first.job_file
    assert file is not None
    await first.close()  # microfactory stops; the print carries on in OctoPrint

    second = make_driver()
    async with EventLog(second) as log:
        await second.connect()
        assert (await second.status()).state is MachineState.RUNNING
        assert await second.attach("someone-elses.gcode") is None
        progress = await second.attach(file, lines_total=102)
        assert progress is not None
        assert progress.lines_total == 102
        assert progress.percent_hint is not None
        assert second.job_file == file
        finished = await log.wait_for(EventKind.FINISHED)
        assert finished.data["file"] == file
        assert finished.data["progress"].percent == 100.0

    # Attaching after the end still reports it, so a late supervisor learns the outcome.
    third = make_driver()
    async with EventLog(third) as log:
        await third.connect()
        progress = await third.attach(file)
        assert progress is not None
        assert progress.percent == 100.0
        assert (await log.wait_for(EventKind.FINISHED)).data["file"] == file
        assert await third.attach(file) is None  # already reported; nothing to follow


async def test_server_killed_and_restarted(
    make_driver: MakeDriver, octoprint: OctoPrintServer
) -> None:
    driver = make_driver()
    async with EventLog(driver) as log:
        await driver.connect()
        await driver.start(program(400))
        await wait_status(driver, lambda s: bool(s.progress and s.progress.percent > 0))
        try:
            octoprint.stop(kill=True)
            status = await wait_status(driver, in_state(MachineState.OFFLINE))
            assert "cannot reach OctoPrint" in status.message
            assert "retrying in" in status.message
            assert "connection refused" in status.message
            assert status.extra["reachable"] is False
            assert status.progress is not None  # the last known progress stays visible
        finally:
            await asyncio.to_thread(octoprint.start)

        # It comes back without the print: that print failed, and the printer reconnects.
        failed = await log.wait_for(EventKind.FAILED)
        assert "OctoPrint lost the print" in failed.data["reason"]
        status = await wait_status(driver, in_state(MachineState.IDLE))
        assert status.extra["reachable"] is True
        # The driver rode out the outage itself: no DISCONNECTED for a supervisor to act on.
        assert EventKind.DISCONNECTED not in log.kinds()
        await driver.start(program(2))  # and it prints again
        await log.wait_for(EventKind.FINISHED)


async def test_printer_lost_mid_print_between_two_polls_is_reconnected(
    make_driver: MakeDriver, octoprint: OctoPrintServer
) -> None:
    """A restart faster than one poll shows only this: the print gone, the printer offline.

    The driver never saw OctoPrint unreachable, yet the printer must come back: the job
    fails with its reason and the printer is connected again, as after an outage.
    """
    driver = make_driver()
    async with EventLog(driver) as log:
        await driver.connect()
        await driver.start(program(400))
        await wait_status(driver, lambda s: bool(s.progress and s.progress.percent > 0))
        octoprint.api("POST", "/api/connection", json={"command": "disconnect"})

        failed = await log.wait_for(EventKind.FAILED)
        assert "OctoPrint lost the print (state: Offline" in failed.data["reason"]
        status = await wait_status(driver, in_state(MachineState.IDLE))
        assert status.extra["reachable"] is True
        assert EventKind.DISCONNECTED not in log.kinds()
        await driver.start(program(2))
        await log.wait_for(EventKind.FINISHED)


async def test_print_survives_a_network_outage(
    make_driver: MakeDriver, octoprint: OctoPrintServer
) -> None:
    """OctoPrint prints on while we cannot reach it; the driver follows it to the end."""
    with SubPathProxy(octoprint.url) as proxy:
        driver = make_driver(url=proxy.url)
        async with EventLog(driver) as log:
            await driver.connect()
            await driver.start(program(100))
            proxy.available = False
            status = await wait_status(driver, in_state(MachineState.OFFLINE))
            assert "HTTP 502" in status.message
            proxy.available = True
            finished = await log.wait_for(EventKind.FINISHED)
            assert finished.data["progress"].percent == 100.0
            assert log.kinds() == [EventKind.STARTED, EventKind.FINISHED]
        await driver.close()


async def test_emergency_stop(make_driver: MakeDriver, octoprint: OctoPrintServer) -> None:
    driver = make_driver()
    async with EventLog(driver) as log:
        await driver.connect()
        await driver.start(program(400))
        await driver.emergency_stop()
        status = await driver.status()
        assert status.state is MachineState.ERROR
        assert "emergency stop" in status.message
        assert (await log.wait_for(EventKind.FAILED)).data["reason"] == "emergency stop"
        state = octoprint.api("GET", "/api/connection").json()["current"]["state"]
        assert state in ("Offline", "Closed")
        await asyncio.sleep(0.6)  # a few polls: the stop stays visible, nothing reconnects
        assert (await driver.status()).state is MachineState.ERROR

        note = await driver.reset()  # the operator's "reset and reconnect"
        assert "reconnected through OctoPrint" in note
        assert (await driver.status()).state is MachineState.IDLE
        state = octoprint.api("GET", "/api/connection").json()["current"]["state"]
        assert state == "Operational"


# -- octorest 0.4's defects, each shown against the real server -----------------------


def test_defect_upload_drops_select_and_print(octoprint: OctoPrintServer) -> None:
    """upload(select=True, print=True) neither selects nor prints; the driver selects after."""
    client = OctoRest(url=octoprint.url, apikey=octoprint.api_key)
    client.upload(("defect-upload.gcode", io.BytesIO(b"G28\n")), select=True, print=True)
    time.sleep(0.5)  # give a (wrongly) started print the time to show; there must be none
    job = client.job_info()
    assert job["state"] == "Operational"
    assert (job["job"]["file"] or {}).get("name") != "defect-upload.gcode"


def test_defect_errors_are_bare_runtime_errors(octoprint: OctoPrintServer) -> None:
    """octorest raises a bare RuntimeError for a refused key; we make it AuthFailed."""
    with pytest.raises(RuntimeError) as info:
        OctoRest(url=octoprint.url, apikey="WRONG")
    assert type(info.value) is RuntimeError
    err = translate_error(info.value, url=octoprint.url, action="checking the API key")
    assert type(err) is AuthFailed


async def test_defect_sub_path(make_driver: MakeDriver, octoprint: OctoPrintServer) -> None:
    """A server behind a reverse proxy at /octoprint/ works; octorest alone cannot reach it."""
    with SubPathProxy(octoprint.url, "/octoprint/") as proxy:
        with pytest.raises(RuntimeError, match=r"\(404\)"):
            await asyncio.to_thread(OctoRest, url=proxy.url, apikey=octoprint.api_key)
        assert proxy.paths == ["/api/version"]  # the sub-path was dropped

        proxy.paths.clear()
        driver = make_driver(url=proxy.url)
        async with EventLog(driver) as log:
            await driver.connect()
            await driver.start(program(2))
            await log.wait_for(EventKind.FINISHED, timeout_s=WAIT_S)
        await driver.close()
        assert proxy.paths
        assert all(p.startswith("/octoprint/api/") for p in proxy.paths), proxy.paths
        assert not any("wizard" in p for p in proxy.paths)
