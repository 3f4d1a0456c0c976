"""Machine-protocol library: Marlin, GRBL, OctoPrint drivers and protocol simulators.

This package never imports `microfactory`; it can be used on its own.
"""

from drivers.base import (
    AuthFailed,
    Driver,
    DriverError,
    Event,
    EventKind,
    FirmwareError,
    MachineBusy,
    MachineOffline,
    MachineState,
    Program,
    ProgramRefused,
    Progress,
    ProtocolError,
    Status,
    Temperature,
    UnknownDriver,
)
from drivers.registry import DRIVER_NAMES, create_driver, driver_class

__all__ = [
    "DRIVER_NAMES",
    "AuthFailed",
    "Driver",
    "DriverError",
    "Event",
    "EventKind",
    "FirmwareError",
    "MachineBusy",
    "MachineOffline",
    "MachineState",
    "Program",
    "ProgramRefused",
    "Progress",
    "ProtocolError",
    "Status",
    "Temperature",
    "UnknownDriver",
    "create_driver",
    "driver_class",
]
