"""Hub request and answer shapes; the routing request and answer are a network contract."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

Process = Literal["fdm_printing", "cnc_milling", "laser_cutting"]


class SizeMm(BaseModel):
    """A part's outer size in mm."""

    model_config = ConfigDict(extra="forbid")

    x: float = Field(ge=0, le=100_000)
    y: float = Field(ge=0, le=100_000)
    z: float = Field(ge=0, le=100_000)


class Point(BaseModel):
    """A place, in degrees (WGS 84)."""

    model_config = ConfigDict(extra="forbid")

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class RouteRequest(BaseModel):
    """What to make and where: the fields, or an OKH manifest or a design's content hash.

    With `okh` or `design_hash`, process, material and size come from the manifest (`tsdc`,
    `material`, `outer-dimensions`); fields given beside them take precedence.
    """

    model_config = ConfigDict(extra="forbid")

    process: Process | list[Process] | None = None
    material: str | None = Field(None, min_length=1, max_length=64)
    size_mm: SizeMm | None = None
    quantity: int = Field(1, ge=1, le=100_000)
    deadline: AwareDatetime | None = None
    near: Point
    radius_km: float = Field(100.0, gt=0, le=20_000)
    okh: dict[str, Any] | None = None
    design_hash: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")


class RoutedShop(BaseModel):
    """A shop that can make it, with when and why."""

    shop_id: str
    name: str
    distance_km: float
    earliest_start: dt.datetime
    earliest_finish: dt.datetime
    machine: str
    reason: str


class ExcludedShop(BaseModel):
    """A nearby shop that cannot make it, and why."""

    shop_id: str
    name: str
    reason: str


class RouteAnswer(BaseModel):
    """Shops best first (soonest finish, then nearest), and the nearby ones that do not fit."""

    shops: list[RoutedShop]
    excluded: list[ExcludedShop]


class ReportAccepted(BaseModel):
    """What the hub did with a pushed report."""

    shop_id: str
    sequence: int
    status: Literal["accepted", "pending", "duplicate"]


class StoredReport(BaseModel):
    """A report as received, for other hubs to mirror."""

    cursor: int
    shop_id: str
    jws: str
    received_at: dt.datetime


class ReportPage(BaseModel):
    """Stored reports from a cursor on; pass `next` as `since` to continue."""

    reports: list[StoredReport]
    next: int


class QueueEntry(BaseModel):
    """A shop's queue for one process."""

    process: str
    depth: float
    wait_h: float


class ShopListed(BaseModel):
    """A shop the hub knows, from its newest report."""

    shop_id: str
    name: str
    url: str
    city: str
    country: str
    lat: float
    lon: float
    processes: list[str]
    materials: list[str]
    sequence: int
    issued_at: dt.datetime
    expires_at: dt.datetime
    expired: bool
    queue: list[QueueEntry]
    equipment: list[dict[str, Any]]


class ShopList(BaseModel):
    """Live shops first, by name; expired ones last with `expired: true`."""

    shops: list[ShopListed]


class PinRead(BaseModel):
    """A shop's key as the hub pinned it, and the admins' decision."""

    shop_id: str
    name: str
    url: str
    status: Literal["pending", "approved", "revoked"]
    public_jwk: dict[str, Any]
    last_sequence: int | None
    first_seen_at: dt.datetime
    decided_at: dt.datetime | None
    decided_by: str | None
    waiting_report: bool


class UpstreamRead(BaseModel):
    """How mirroring one upstream hub goes."""

    url: str
    next_cursor: int | None
    last_attempt_at: dt.datetime | None
    last_ok_at: dt.datetime | None
    last_error: str | None
    stored: int
    refused: int
    last_refusal: str | None
