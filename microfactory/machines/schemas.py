"""Machine request and response bodies, with connection settings validated per driver."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from drivers import DRIVER_NAMES
from microfactory.machines.models import MachineKind

BAUDRATES = (9600, 19200, 38400, 57600, 115200, 230400, 250000, 500000, 1000000)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SerialConnection(_Strict):
    """A USB serial port (any device path, a pty included)."""

    port: str = Field(min_length=1, max_length=255)
    baudrate: int = 115200

    @field_validator("port")
    @classmethod
    def _port(cls, v: str) -> str:
        if not (v.startswith("/") or v.upper().startswith("COM")):
            raise ValueError("port must be a device path such as /dev/ttyUSB0")
        return v

    @field_validator("baudrate")
    @classmethod
    def _baud(cls, v: int) -> int:
        if v not in BAUDRATES:
            raise ValueError(f"baudrate must be one of {', '.join(map(str, BAUDRATES))}")
        return v


class MarlinConnection(SerialConnection):
    """Marlin over USB serial."""

    window: int | None = Field(None, ge=1, le=64)  # lines in flight without ADVANCED_OK


class GrblConnection(SerialConnection):
    """GRBL 1.1 over USB serial."""

    check_mode: bool = False  # validate the whole program with $C before running


class OctoPrintConnection(_Strict):
    """An OctoPrint server."""

    url: AnyHttpUrl
    api_key: str = Field(min_length=8, max_length=256)
    printer_port: str = "AUTO"  # the printer's port as OctoPrint names it; VIRTUAL for tests
    baudrate: int | None = None  # None: OctoPrint chooses
    timeout_s: float | None = Field(None, gt=0, le=300)  # per HTTP request
    poll_interval_s: float | None = Field(None, gt=0, le=60)
    connect_timeout_s: float | None = Field(None, gt=0, le=300)
    max_backoff_s: float | None = Field(None, gt=0, le=600)


class ManualConnection(_Strict):
    """No connection: booked and logged only."""


class SimConnection(BaseModel):
    """A built-in simulator on a pty; its other options (fault injection) are the driver's."""

    model_config = ConfigDict(extra="allow")

    speed_factor: float = Field(20.0, ge=0, le=10000)  # 0: instant
    baud: int | None = Field(None, ge=0)  # emulate the link's byte rate; None = 115200, 0 = off

    @model_validator(mode="after")
    def _known_options(self) -> SimConnection:
        known = sim_options(self._driver) if hasattr(self, "_driver") else None
        extra = set(self.model_extra or {})
        if known is not None and extra - known:
            raise ValueError(
                f"unknown simulator option(s) {', '.join(sorted(extra - known))}; "
                f"known: {', '.join(sorted(known))}"
            )
        return self


class SimMarlinConnection(SimConnection):
    """sim-marlin: options are the fields of drivers.sim.marlin.SimOptions."""

    _driver = "sim-marlin"


class SimGrblConnection(SimConnection):
    """sim-grbl: options are drivers.sim.grbl.SimGrblDriver.extra_settings."""

    _driver = "sim-grbl"


def sim_options(driver: str) -> set[str]:
    """Return the options a simulator driver accepts."""
    import dataclasses

    if driver == "sim-marlin":
        from drivers.sim.marlin import SimOptions

        return {f.name for f in dataclasses.fields(SimOptions)}
    from drivers.sim.grbl import SimGrblDriver

    return set(SimGrblDriver.extra_settings)


CONNECTION_MODELS: dict[str, type[BaseModel]] = {
    "marlin": MarlinConnection,
    "grbl": GrblConnection,
    "octoprint": OctoPrintConnection,
    "manual": ManualConnection,
    "sim-marlin": SimMarlinConnection,
    "sim-grbl": SimGrblConnection,
}
SECRET_FIELDS = frozenset({"api_key"})
assert set(CONNECTION_MODELS) == set(DRIVER_NAMES)


def validate_connection(driver: str, connection: dict[str, Any]) -> dict[str, Any]:
    """Validate connection settings for a driver; raise ValueError naming the problem."""
    model = CONNECTION_MODELS.get(driver)
    if model is None:
        raise ValueError(f"unknown driver {driver!r}; valid drivers are: {', '.join(DRIVER_NAMES)}")
    try:
        return model.model_validate(connection).model_dump(mode="json", exclude_none=True)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "connection"
            msg = (
                "is not a setting of this driver"
                if err["type"] == "extra_forbidden"
                else err["msg"]
            )
            parts.append(f"{loc}: {msg}")
        raise ValueError(f"invalid connection for driver {driver!r}: " + "; ".join(parts)) from None


def mask_secret(value: str) -> str:
    """Show only the last 4 characters of a secret."""
    return "****" + value[-4:] if len(value) > 8 else "****"


def masked_connection(connection: dict[str, Any]) -> dict[str, Any]:
    """Return connection settings with secrets masked."""
    return {
        k: mask_secret(str(v)) if k in SECRET_FIELDS and v else v for k, v in connection.items()
    }


class BuildVolume(_Strict):
    """Usable build volume in mm."""

    x: float = Field(gt=0, le=10000)
    y: float = Field(gt=0, le=10000)
    z: float = Field(gt=0, le=10000)


class Capabilities(_Strict):
    """What a machine can do; the matcher reads these."""

    nozzle_diameter_mm: float | None = Field(None, gt=0, le=5)
    materials: list[str] = Field(default_factory=list)  # e.g. PLA, PETG, plywood-3mm
    loaded_material: str | None = None
    max_hotend_c: float | None = Field(None, gt=0, le=600)
    max_bed_c: float | None = Field(None, ge=0, le=200)
    spindle_max_rpm: float | None = Field(None, gt=0)
    laser_power_w: float | None = Field(None, gt=0)
    tags: list[str] = Field(default_factory=list)


class MachineBase(_Strict):
    """Fields shared by create and read."""

    name: str = Field(min_length=1, max_length=100)
    kind: MachineKind
    driver: str
    build_volume_mm: BuildVolume | None = None
    capabilities: Capabilities = Field(default_factory=Capabilities)
    enabled: bool = True
    maintenance: bool = False
    notes: str = Field("", max_length=5000)
    power_w: float | None = Field(None, ge=0, le=100_000)  # rated draw, for energy estimates


class MachineCreate(MachineBase):
    """A new machine."""

    connection: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_connection(self) -> MachineCreate:
        self.connection = validate_connection(self.driver, self.connection)
        return self


class MachineUpdate(_Strict):
    """Changes to a machine; a masked secret sent back unchanged keeps the stored one."""

    name: str | None = Field(None, min_length=1, max_length=100)
    kind: MachineKind | None = None
    driver: str | None = None
    connection: dict[str, Any] | None = None
    build_volume_mm: BuildVolume | None = None
    capabilities: Capabilities | None = None
    enabled: bool | None = None
    maintenance: bool | None = None
    notes: str | None = Field(None, max_length=5000)
    power_w: float | None = Field(None, ge=0, le=100_000)  # null clears it

    @field_validator("driver")
    @classmethod
    def _driver(cls, v: str | None) -> str | None:
        if v is not None and v not in DRIVER_NAMES:
            raise ValueError(f"unknown driver {v!r}; valid drivers are: {', '.join(DRIVER_NAMES)}")
        return v


class MachineRead(BaseModel):
    """A machine as the API shows it: secrets masked, live status included."""

    id: int
    name: str
    kind: MachineKind
    driver: str
    connection: dict[str, Any]
    build_volume_mm: BuildVolume | None
    capabilities: Capabilities
    enabled: bool
    maintenance: bool
    notes: str
    power_w: float | None
    status: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime


class CommandRequest(_Strict):
    """Raw G-code lines for a machine (operators)."""

    lines: list[str] = Field(min_length=1, max_length=100)


class CommandResult(BaseModel):
    """What the machine answered to each line."""

    results: list[dict[str, Any]]
