"""Driver registry: maps the configured driver name to its class (as Moonraker's power.py does)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from drivers.base import Driver, UnknownDriver

# name -> (module, class). Imported on first use so that a machine's driver pulls in only
# what it needs (octorest and requests are not loaded for a GRBL-only shop).
_DRIVERS: dict[str, tuple[str, str]] = {
    "marlin": ("drivers.marlin", "MarlinDriver"),
    "grbl": ("drivers.grbl", "GrblDriver"),
    "octoprint": ("drivers.octoprint", "OctoPrintDriver"),
    "moonraker": ("drivers.moonraker", "MoonrakerDriver"),
    "prusalink": ("drivers.prusalink", "PrusaLinkDriver"),
    "manual": ("drivers.manual", "ManualDriver"),
    "sim-marlin": ("drivers.sim.marlin", "SimMarlinDriver"),
    "sim-grbl": ("drivers.sim.grbl", "SimGrblDriver"),
}

DRIVER_NAMES: tuple[str, ...] = tuple(_DRIVERS)


def driver_class(name: str) -> type[Driver]:
    """Return the driver class for a configured name, or fail naming the valid ones."""
    try:
        module_name, class_name = _DRIVERS[name]
    except KeyError:
        valid = ", ".join(DRIVER_NAMES)
        raise UnknownDriver(f"unknown driver {name!r}; valid drivers are: {valid}") from None
    cls: type[Driver] = getattr(importlib.import_module(module_name), class_name)
    return cls


def create_driver(name: str, settings: Mapping[str, Any]) -> Driver:
    """Instantiate the driver a machine is configured with."""
    return driver_class(name)(settings)
