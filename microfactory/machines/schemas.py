"""Machine request and response bodies, with connection settings validated per driver."""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Annotated, Any

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from drivers import DRIVER_NAMES
from drivers.planner import limits_from_dict
from microfactory.machines.models import MachineKind
from microfactory.types import Bool, Int, Number

BAUDRATES = (9600, 19200, 38400, 57600, 115200, 230400, 250000, 500000, 1000000)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SerialConnection(_Strict):
    """A USB serial port (any device path, a pty included)."""

    port: str = Field(min_length=1, max_length=255)
    baudrate: Int = 115200

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

    window: Int | None = Field(None, ge=1, le=64)  # lines in flight without ADVANCED_OK


class GrblConnection(SerialConnection):
    """GRBL 1.1 over USB serial."""

    check_mode: Bool = False  # validate the whole program with $C before running


class OctoPrintConnection(_Strict):
    """An OctoPrint server."""

    url: AnyHttpUrl
    api_key: str = Field(min_length=8, max_length=256)
    printer_port: str = "AUTO"  # the printer's port as OctoPrint names it; VIRTUAL for tests
    baudrate: Int | None = None  # None: OctoPrint chooses
    timeout_s: Number | None = Field(None, gt=0, le=300)  # per HTTP request
    poll_interval_s: Number | None = Field(None, gt=0, le=60)
    connect_timeout_s: Number | None = Field(None, gt=0, le=300)
    max_backoff_s: Number | None = Field(None, gt=0, le=600)


class MoonrakerConnection(_Strict):
    """A Moonraker server in front of Klipper."""

    url: AnyHttpUrl
    # Optional: Moonraker lets its [authorization] trusted_clients in without a key.
    api_key: str | None = Field(None, min_length=8, max_length=256)
    timeout_s: Number | None = Field(None, gt=0, le=300)  # per HTTP request and RPC call
    max_backoff_s: Number | None = Field(None, gt=0, le=600)


class PrusaLinkConnection(_Strict):
    """A Prusa printer's PrusaLink: HTTP digest (username and password) or an API key."""

    url: AnyHttpUrl
    username: str | None = Field(None, min_length=1, max_length=256)
    password: str | None = Field(None, min_length=1, max_length=256)
    api_key: str | None = Field(None, min_length=1, max_length=256)
    storage: str | None = Field(None, pattern=r"^/?[A-Za-z0-9_-]{1,32}$")  # None: the first
    timeout_s: Number | None = Field(None, gt=0, le=300)  # per HTTP request
    poll_interval_s: Number | None = Field(None, gt=0, le=60)
    max_backoff_s: Number | None = Field(None, gt=0, le=600)

    @model_validator(mode="after")
    def _credentials(self) -> PrusaLinkConnection:
        if not self.api_key and not (self.username and self.password):
            raise ValueError(
                "PrusaLink needs its username and password (on the printer's screen: "
                "Settings > Network > PrusaLink) or an api_key"
            )
        if bool(self.username) != bool(self.password):
            raise ValueError("give PrusaLink's username and its password together")
        return self


class ManualConnection(_Strict):
    """No connection: booked and logged only."""


class SimConnection(BaseModel):
    """A built-in simulator on a pty; its other options (fault injection) are the driver's."""

    model_config = ConfigDict(extra="allow")

    speed_factor: Number = Field(20.0, ge=0, le=10000)  # 0: instant
    baud: Int | None = Field(None, ge=0)  # emulate the link's byte rate; None = 115200, 0 = off

    @model_validator(mode="after")
    def _known_options(self) -> SimConnection:
        known = sim_options(self._driver) if hasattr(self, "_driver") else None
        extra = set(self.model_extra or {})
        for key, value in (self.model_extra or {}).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number")
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
    "moonraker": MoonrakerConnection,
    "prusalink": PrusaLinkConnection,
    "manual": ManualConnection,
    "sim-marlin": SimMarlinConnection,
    "sim-grbl": SimGrblConnection,
}
SECRET_FIELDS = frozenset({"api_key", "password"})  # password: PrusaLink's
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


def mask_url(value: str) -> str:
    """Mask the user and password in a URL (http://user:pass@host -> http://****@host)."""
    return _URL_USERINFO.sub(r"\1****@", value)


_URL_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@]*@")


def masked_connection(connection: dict[str, Any]) -> dict[str, Any]:
    """Return connection settings with secrets masked, credentials in URLs included."""
    shown: dict[str, Any] = {}
    for k, v in connection.items():
        if k in SECRET_FIELDS and v:
            shown[k] = mask_secret(str(v))
        elif isinstance(v, str) and "@" in v:
            shown[k] = mask_url(v)
        else:
            shown[k] = v
    return shown


class BuildVolume(_Strict):
    """Usable build volume in mm."""

    x: Number = Field(gt=0, le=10000)
    y: Number = Field(gt=0, le=10000)
    z: Number = Field(gt=0, le=10000)


class Capabilities(_Strict):
    """What a machine can do; the matcher reads these."""

    # Who made it and which model: the capacity report counts equipment per make and model.
    make: str | None = Field(None, max_length=100)
    model: str | None = Field(None, max_length=100)
    nozzle_diameter_mm: Number | None = Field(None, gt=0, le=5)
    materials: list[str] = Field(default_factory=list)  # e.g. PLA, PETG, plywood-3mm
    loaded_material: str | None = None
    max_hotend_c: Number | None = Field(None, gt=0, le=600)
    max_bed_c: Number | None = Field(None, ge=0, le=200)
    spindle_max_rpm: Number | None = Field(None, gt=0, le=1_000_000)
    laser_power_w: Number | None = Field(None, gt=0, le=1_000_000)
    tags: list[str] = Field(default_factory=list)
    # The machine's own motion limits (drivers.planner.MachineLimits field names), read at
    # connect with "source" and "read_at"; an operator's override has "source": "operator"
    # and is never replaced by what the machine reports.
    motion_limits: dict[str, Any] | None = None

    @field_validator("motion_limits")
    @classmethod
    def _check_motion_limits(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                limits_from_dict(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"motion_limits: {exc}") from None
        return value


class MachineBase(_Strict):
    """Fields shared by create and read."""

    name: str = Field(min_length=1, max_length=100)
    kind: MachineKind
    driver: str
    build_volume_mm: BuildVolume | None = None
    capabilities: Capabilities = Field(default_factory=Capabilities)
    enabled: Bool = True
    maintenance: Bool = False
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

    # Omitted means "unchanged"; only build_volume_mm may be null ("no build volume"). The
    # others are NOT NULL in the database, so a null is refused here (it was a 500).
    name: Annotated[str, Field(min_length=1, max_length=100)] | SkipJsonSchema[None] = None
    kind: MachineKind | SkipJsonSchema[None] = None
    driver: str | SkipJsonSchema[None] = None
    connection: dict[str, Any] | SkipJsonSchema[None] = None
    build_volume_mm: BuildVolume | None = None
    capabilities: Capabilities | SkipJsonSchema[None] = None
    enabled: Bool | SkipJsonSchema[None] = None
    maintenance: Bool | SkipJsonSchema[None] = None
    notes: Annotated[str, Field(max_length=5000)] | SkipJsonSchema[None] = None
    power_w: Annotated[Number, Field(ge=0, le=100_000)] | None = None  # null clears it

    @model_validator(mode="after")
    def _no_nulls(self) -> MachineUpdate:
        nulls = sorted(
            name
            for name in self.model_fields_set
            if name not in ("build_volume_mm", "power_w") and getattr(self, name) is None
        )
        if nulls:
            raise ValueError(f"{', '.join(nulls)} cannot be null; leave a field out to keep it")
        return self

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


class JogRequest(_Strict):
    """Move the tool by a distance on some axes, relative to where it is (operators)."""

    x: Number = Field(0.0, ge=-100, le=100)
    y: Number = Field(0.0, ge=-100, le=100)
    z: Number = Field(0.0, ge=-100, le=100)
    feed_mm_min: Number = Field(3000.0, gt=0, le=20000)


class HomeRequest(_Strict):
    """Home some axes (all when empty; GRBL always homes all of them)."""

    axes: list[Annotated[str, Field(pattern="^[xyzXYZ]$")]] = Field(default_factory=list)


class PreheatRequest(_Strict):
    """Set a printer's heaters to a preset: pla, petg, abs or off."""

    preset: str = Field(min_length=1, max_length=20)


class ResetResult(BaseModel):
    """What a reset did, and the machine's status after it."""

    message: str
    status: dict[str, Any]


class TemperatureSample(BaseModel):
    """One sample of a machine's temperatures: {heater: [actual, target]} at unix time t."""

    t: float
    temps: dict[str, list[float | None]]


class WebcamSettings(_Strict):
    """Where a machine's webcam is: an MJPEG stream and/or a snapshot URL (may hold a password)."""

    stream_url: AnyHttpUrl | None = None
    snapshot_url: AnyHttpUrl | None = None


class WebcamRead(BaseModel):
    """A machine's webcam as the API shows it: URLs with their credentials masked."""

    stream_url: str | None = None
    snapshot_url: str | None = None
