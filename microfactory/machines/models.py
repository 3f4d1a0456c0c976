"""The machine registry."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Enum, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from microfactory.db import Base, TimestampMixin


class MachineKind(StrEnum):
    """What a machine makes things with."""

    FDM_PRINTER = "fdm_printer"
    CNC_MILL = "cnc_mill"
    LASER_CUTTER = "laser_cutter"
    OTHER = "other"


class Machine(TimestampMixin, Base):
    """One machine of the shop, driven or manual."""

    __tablename__ = "machines"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[MachineKind] = mapped_column(
        Enum(
            MachineKind,
            native_enum=False,
            length=32,
            values_callable=lambda e: [m.value for m in e],
        )
    )
    driver: Mapped[str] = mapped_column(String(32))  # a name from drivers.DRIVER_NAMES
    connection: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    build_volume_x_mm: Mapped[float | None]
    build_volume_y_mm: Mapped[float | None]
    build_volume_z_mm: Mapped[float | None]
    capabilities: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(default=True)
    maintenance: Mapped[bool] = mapped_column(default=False)
    notes: Mapped[str] = mapped_column(Text, default="")
    power_w: Mapped[float | None]  # rated power draw, for the usage log's energy estimate
    # {"stream_url": MJPEG, "snapshot_url": JPEG}: may hold credentials, so it never leaves
    # the server; logged-in users see the camera through its proxy (machines/webcam.py).
    webcam: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
