"""Hub tables: pinned shops, reports as received, upstream cursors, and the routing index."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Enum,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from microfactory.db import Base, UTCDateTime, utcnow


class PinStatus(enum.StrEnum):
    """Whether the hub trusts a shop's key."""

    PENDING = "pending"  # seen, waiting for an admin
    APPROVED = "approved"  # pinned: its reports are taken
    REVOKED = "revoked"  # refused from now on


class HubShop(Base):
    """A shop the hub has seen, with its pinned public key and the last sequence taken."""

    __tablename__ = "hub_shops"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # RFC 7638 thumbprint
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[PinStatus] = mapped_column(
        Enum(
            PinStatus, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]
        )
    )
    name: Mapped[str] = mapped_column(String(200), default="")  # from its latest report
    url: Mapped[str] = mapped_column(String(500), default="")
    # Of the last report stored; 64-bit: a shop may count in milliseconds since 1970.
    last_sequence: Mapped[int | None] = mapped_column(BigInteger)
    # The newest report that arrived while the shop waited for approval: indexed on approval.
    pending_jws: Mapped[str | None] = mapped_column(Text)
    pending_source: Mapped[str | None] = mapped_column(String(500))
    first_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    decided_by: Mapped[str | None] = mapped_column(String(64))  # the admin's username


class HubReport(Base):
    """A signed report exactly as received; `cursor` orders them for mirroring hubs."""

    __tablename__ = "hub_reports"
    __table_args__ = (UniqueConstraint("shop_id", "sequence", name="uq_hub_reports_shop_sequence"),)

    cursor: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    shop_id: Mapped[str] = mapped_column(String(64), index=True)
    sequence: Mapped[int] = mapped_column(BigInteger)
    jws: Mapped[str] = mapped_column(Text)  # the compact JWS, byte for byte as received
    issued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    source: Mapped[str] = mapped_column(String(500), default="push")  # "push" or an upstream


class HubUpstream(Base):
    """How far this hub has mirrored another hub, and how the last pull went."""

    __tablename__ = "hub_upstreams"

    url: Mapped[str] = mapped_column(String(500), primary_key=True)
    next_cursor: Mapped[int | None] = mapped_column(Integer)
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_ok_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    stored: Mapped[int] = mapped_column(Integer, default=0)  # reports taken, all time
    refused: Mapped[int] = mapped_column(Integer, default=0)  # reports that failed a check
    last_refusal: Mapped[str | None] = mapped_column(Text)


class HubShopIndex(Base):
    """One row per shop with a stored report: where it is and what it said (derived).

    Rebuilt from the shop's newest report by `index.index_report`; the dashboard's list, the
    shop list and routing's exclusion reasons read it. On PostgreSQL a GiST index on
    `ll_to_earth(lat, lon)` (migration 0009) finds the shops near a point.
    """

    __tablename__ = "hub_shop_index"
    __table_args__ = (Index("ix_hub_shop_index_lat_lon", "lat", "lon"),)

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    report_cursor: Mapped[int] = mapped_column(Integer)
    sequence: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(String(500), default="")
    city: Mapped[str] = mapped_column(String(200), default="")
    country: Mapped[str] = mapped_column(String(64), default="")
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    issued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    processes: Mapped[list[str]] = mapped_column(JSON, default=list)
    materials: Mapped[list[str]] = mapped_column(JSON, default=list)
    # What the list pages show: queue per process, equipment summary, free hours per day.
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class HubOffer(Base):
    """One machine model of a shop and one material it works: what routing filters on.

    `dim_a >= dim_b >= dim_c` are the machine's work volume sorted (mm), so a part fits in any
    orientation when its sorted sizes are each no larger. `free_hours` are the report's free
    machine-hours for (process, material), one per day from `free_from`, comma-separated.
    """

    __tablename__ = "hub_offers"
    __table_args__ = (Index("ix_hub_offers_process_material_lat", "process", "material", "lat"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    shop_id: Mapped[str] = mapped_column(String(64), index=True)
    shop_name: Mapped[str] = mapped_column(String(200), default="")
    process: Mapped[str] = mapped_column(String(32))
    material: Mapped[str] = mapped_column(String(64))  # lower case
    machine: Mapped[str] = mapped_column(String(200))  # "Prusa MK4"
    quantity: Mapped[int] = mapped_column(Integer, default=1)
    dim_a: Mapped[float] = mapped_column(Float)
    dim_b: Mapped[float] = mapped_column(Float)
    dim_c: Mapped[float] = mapped_column(Float)
    nozzle_mm: Mapped[float | None] = mapped_column(Float)
    laser_w: Mapped[float | None] = mapped_column(Float)
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    wait_h: Mapped[float] = mapped_column(Float, default=0.0)
    on_hand: Mapped[bool | None] = mapped_column()  # None: the shop keeps no inventory
    free_from: Mapped[str] = mapped_column(String(10), default="")  # ISO date
    free_hours: Mapped[str] = mapped_column(String(200), default="")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")


class HubIndexVersion(Base):
    """One row: the routing index's version, bumped by every transaction that changes it.

    Hub processes keep the index in memory for routing (`memindex`); each query compares
    this number with its copy's and, if it moved, reloads the shops `hub_index_log` names.
    The bump is an UPDATE of this one row, so the transactions that change the index are
    serialised from their bump to their commit: versions become visible in order, and a
    reader that has seen version N has seen every change up to N.
    """

    __tablename__ = "hub_index_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    # Log rows below this version were pruned: a copy older than it reloads everything.
    log_floor: Mapped[int] = mapped_column(BigInteger, default=0)


class HubIndexLog(Base):
    """The shops whose index rows a version changed (re-indexed, dropped or forgotten)."""

    __tablename__ = "hub_index_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(BigInteger, index=True)
    shop_id: Mapped[str] = mapped_column(String(64))


# GiST indexes on ll_to_earth(lat, lon) (cube + earthdistance), PostgreSQL only; declared
# here so that the schema check sees them, created by migration 0009.
# The offers' index leads with process and material (btree_gist): a query reads only the
# entries of its process and material near the point (measured at 100,000 shops: 717 rows
# read instead of 4,869 with a location-only index).
Index(
    "ix_hub_offers_earth",
    HubOffer.process,
    HubOffer.material,
    func.ll_to_earth(HubOffer.lat, HubOffer.lon),
    postgresql_using="gist",
).ddl_if(dialect="postgresql")
Index(
    "ix_hub_shop_index_earth",
    func.ll_to_earth(HubShopIndex.lat, HubShopIndex.lon),
    postgresql_using="gist",
).ddl_if(dialect="postgresql")
