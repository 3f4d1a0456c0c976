"""The prusalink driver against the real PrusaLink 0.8.1 (PyPI), in front of a pty that
answers PrusaLink's startup questions as Prusa firmware does (tests/peers/prusalink_real.py).

The real server's HTTP API, digest auth, API key and status are what is tested here; it does
not print (its printer polling needs more of Prusa's firmware than the pty answers), so the
jobs are tested against the v1 API peer (test_prusalink_server.py). See docs/prusalink.md.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from drivers.base import AuthFailed, MachineBusy, MachineState, Program
from drivers.prusalink import PrusaLinkDriver
from tests.conftest import require_or_skip
from tests.peers.prusalink_real import (
    RealPrusaLink,
    prusalink_executable,
    running_prusalink,
    venv_path,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def real_prusalink() -> Iterator[RealPrusaLink]:
    require_or_skip(
        prusalink_executable() is not None,
        f"PrusaLink is not installed in {venv_path()}; run scripts/prusalink-venv.sh "
        "(or set MICROFACTORY_PRUSALINK_VENV)",
    )
    with running_prusalink() as server:
        yield server


def driver_for(server: RealPrusaLink, **settings: str) -> PrusaLinkDriver:
    return PrusaLinkDriver({"url": server.url, "timeout_s": 5, "poll_interval_s": 0.2, **settings})


async def test_the_driver_reads_the_real_prusalinks_version_and_status(
    real_prusalink: RealPrusaLink,
) -> None:
    driver = driver_for(
        real_prusalink, username=real_prusalink.user, password=real_prusalink.password
    )
    try:
        await driver.connect()
        status = await driver.status()
        assert status.extra["server"] == "PrusaLink 0.8.1"
        assert status.extra["storage"] == "local"  # PrusaLink's own folder, from /api/v1/storage
        # Still gathering the printer's details (the pty does not answer them all): BUSY.
        assert status.extra["prusalink_state"] in ("BUSY", "IDLE", "READY")
        if status.extra["prusalink_state"] == "BUSY":
            assert status.state is MachineState.RUNNING
            assert status.message == "busy"
            with pytest.raises(MachineBusy, match="the printer is busy: busy"):
                await driver.start(Program.from_text("part.gcode", "G28\n"))
    finally:
        await driver.close()


async def test_the_real_prusalink_refuses_wrong_credentials_clearly(
    real_prusalink: RealPrusaLink,
) -> None:
    wrong = driver_for(real_prusalink, username=real_prusalink.user, password="not-the-password")
    with pytest.raises(AuthFailed, match=r"PrusaLink refused the credentials \(HTTP 401\)") as e:
        await wrong.connect()
    assert "not-the-password" not in str(e.value)
    await wrong.close()
    bad_key = driver_for(real_prusalink, api_key="wrong-key-0123")
    with pytest.raises(AuthFailed, match=r"PrusaLink refused the credentials \(HTTP 403\)"):
        await bad_key.connect()
    await bad_key.close()
    keyed = driver_for(real_prusalink, api_key=real_prusalink.api_key)
    try:
        await keyed.connect()
        assert (await keyed.status()).extra["server"] == "PrusaLink 0.8.1"
    finally:
        await keyed.close()
