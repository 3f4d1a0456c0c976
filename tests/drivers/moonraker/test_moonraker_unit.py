"""The moonraker driver's settings: validated where machines are saved, and by the driver."""

from __future__ import annotations

import pytest

from drivers import create_driver
from drivers.base import DriverError
from drivers.moonraker import MoonrakerDriver
from microfactory.machines.schemas import validate_connection


def test_a_moonraker_machine_needs_a_url_and_may_have_an_api_key() -> None:
    assert validate_connection("moonraker", {"url": "http://voron.local:7125"}) == {
        "url": "http://voron.local:7125/"
    }
    keyed = validate_connection(
        "moonraker", {"url": "http://voron.local", "api_key": "0123456789abcdef"}
    )
    assert keyed["api_key"] == "0123456789abcdef"
    with pytest.raises(ValueError, match="url"):
        validate_connection("moonraker", {})
    with pytest.raises(ValueError, match="url"):
        validate_connection("moonraker", {"url": "voron.local:7125"})
    with pytest.raises(ValueError, match="printer_port"):
        validate_connection("moonraker", {"url": "http://voron.local", "printer_port": "x"})


def test_the_registry_creates_the_driver_and_it_refuses_a_bad_url() -> None:
    assert isinstance(create_driver("moonraker", {"url": "http://voron.local"}), MoonrakerDriver)
    with pytest.raises(DriverError, match=r"Moonraker url must be http\(s\)://"):
        create_driver("moonraker", {"url": "ftp://voron.local"})
