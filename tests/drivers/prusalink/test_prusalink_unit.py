"""The prusalink driver's state mapping and settings, without a server."""

from __future__ import annotations

import pytest

from drivers import create_driver
from drivers.base import DriverError, MachineState
from drivers.prusalink import PrusaLinkDriver, machine_state, state_message
from microfactory.analysis.commands import FIRMWARE_OF_DRIVER
from microfactory.machines.schemas import masked_connection, validate_connection


@pytest.mark.parametrize(
    ("printer_state", "ours"),
    [
        ("IDLE", MachineState.IDLE),
        ("READY", MachineState.IDLE),
        ("FINISHED", MachineState.IDLE),
        ("STOPPED", MachineState.IDLE),
        ("BUSY", MachineState.RUNNING),
        ("PRINTING", MachineState.RUNNING),
        ("PAUSED", MachineState.PAUSED),
        ("ATTENTION", MachineState.PAUSED),
        ("ERROR", MachineState.ERROR),
        ("SOMETHING_NEW", MachineState.ERROR),
    ],
)
def test_every_prusalink_state_maps_to_a_machine_state(
    printer_state: str, ours: MachineState
) -> None:
    assert machine_state(printer_state) is ours


def test_operators_read_the_state_and_the_printers_message() -> None:
    assert state_message("IDLE") == "ready"
    assert state_message("PRINTING", "OK", "mf-a.gcode") == "printing mf-a.gcode"
    assert state_message("ERROR", "MINTEMP triggered") == "printer error: MINTEMP triggered"
    assert (
        state_message("ATTENTION", "Filament runout", "mf-a.gcode")
        == "needs attention at the printer (mf-a.gcode): Filament runout"
    )
    assert "unknown PrusaLink state" in state_message("WEIRD")


def test_a_prusalink_machine_needs_a_url_and_credentials() -> None:
    digest = validate_connection(
        "prusalink", {"url": "http://mk4.local", "username": "maker", "password": "secret-pw"}
    )
    assert digest["username"] == "maker"
    assert masked_connection(digest)["password"] != "secret-pw"
    keyed = validate_connection("prusalink", {"url": "http://mk4.local", "api_key": "abcd1234"})
    assert masked_connection(keyed)["api_key"] != "abcd1234"
    with pytest.raises(ValueError, match="username and password"):
        validate_connection("prusalink", {"url": "http://mk4.local"})
    with pytest.raises(ValueError, match="together"):
        validate_connection(
            "prusalink", {"url": "http://mk4.local", "username": "maker", "api_key": "abcd1234"}
        )
    with pytest.raises(ValueError, match="url"):
        validate_connection("prusalink", {"url": "mk4.local", "api_key": "abcd1234"})
    assert FIRMWARE_OF_DRIVER["prusalink"] == "marlin"


def test_the_registry_creates_the_driver_and_it_refuses_bad_settings() -> None:
    driver = create_driver("prusalink", {"url": "http://mk4.local", "api_key": "abcd1234"})
    assert isinstance(driver, PrusaLinkDriver)
    assert driver.secret_fields == {"api_key", "password"}
    with pytest.raises(DriverError, match=r"PrusaLink url must be http\(s\)://"):
        create_driver("prusalink", {"url": "ftp://mk4.local", "api_key": "abcd1234"})
    with pytest.raises(DriverError, match="username and password"):
        create_driver("prusalink", {"url": "http://mk4.local"})
