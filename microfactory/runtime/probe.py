"""Test a machine's connection settings: connect once, read the firmware, close.

The admin's "Test connection" button. It sits in the runtime because it talks to a driver
(the runtime is the only layer that does); pages reach it through `app.state.probe`.

A machine its supervisor is connected to is not opened a second time: a second open of a
serial port fights the supervisor for the link (and the DTR line of an open resets most Marlin
boards), so what the supervisor reads is the answer. A machine running a job is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from drivers import create_driver
from drivers.base import DriverError
from microfactory.machines.channel import CommandChannel
from microfactory.machines.models import Machine

log = logging.getLogger("microfactory.probe")

PROBE_TIMEOUT_S = 10.0  # a handshake of a Marlin board after its reset takes 2-3 s
LIVE_STATES = frozenset({"idle", "running", "paused", "error"})  # the supervisor holds the link


@dataclass(frozen=True)
class ProbeResult:
    """What a connection test found, in words for the admin."""

    ok: bool
    message: str
    firmware: str | None = None


async def probe(
    fleet: CommandChannel, machine: Machine, *, timeout_s: float = PROBE_TIMEOUT_S
) -> ProbeResult:
    """Connect to a machine with its saved settings, report its firmware or why not, close."""
    if machine.driver == "manual":
        return ProbeResult(True, "a manual machine has no connection to test")
    running = fleet.running_job(machine.id)
    if running is not None:
        return ProbeResult(
            False,
            f"{machine.name} is running job {running}: a test would disturb it; "
            "test it when the job has ended",
        )
    live = fleet.status(machine)
    if live.get("state") in LIVE_STATES:
        firmware = live.get("firmware")
        return ProbeResult(
            True,
            f"connected now ({live.get('state')})"
            + (f", firmware {firmware}" if firmware else "")
            + ": the machine's own link answers, so it was not opened a second time",
            firmware,
        )
    return await probe_settings(machine.driver, machine.connection or {}, timeout_s=timeout_s)


async def probe_settings(
    driver_name: str, connection: dict[str, Any], *, timeout_s: float = PROBE_TIMEOUT_S
) -> ProbeResult:
    """Open a driver with these settings, read its status, and close it again."""
    try:
        driver = create_driver(driver_name, connection)
    except (DriverError, TypeError, ValueError) as exc:
        return ProbeResult(False, f"the settings are not usable: {exc}")
    try:
        await asyncio.wait_for(driver.connect(), timeout_s)
        status = await asyncio.wait_for(driver.status(), timeout_s)
    except TimeoutError:
        return ProbeResult(False, f"no answer within {timeout_s:g} s: check the port or URL")
    except (DriverError, OSError) as exc:
        return ProbeResult(False, str(exc) or type(exc).__name__)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(driver.close(), timeout_s)
    firmware = status.firmware
    log.info("connection test of a %s driver: %s", driver_name, firmware or status.state.value)
    return ProbeResult(
        True,
        "connected" + (f": firmware {firmware}" if firmware else f" ({status.state.value})"),
        firmware,
    )
