"""Designs of the commons and their files."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from microfactory.db import Base, TimestampMixin, UTCDateTime, utcnow


class Visibility(StrEnum):
    """Who may see a design."""

    PUBLIC = "public"  # every member, and other shops when network publishing is on
    SHOP = "shop"  # members of this shop only (the default: nothing leaves without a choice)
    PRIVATE = "private"  # its author (and the shop's admins)


class Design(TimestampMixin, Base):
    """An open design: files, licence and attribution, named by the hash of its files."""

    __tablename__ = "designs"

    id: Mapped[int] = mapped_column(primary_key=True)
    # SHA-256 over the files in canonical order (see designs.storage.content_hash): the same
    # files make the same hash in every shop of the network.
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    licence: Mapped[str] = mapped_column(String(200))  # normalised SPDX expression
    authors: Mapped[list[str]] = mapped_column(JSON, default=list)
    source_url: Mapped[str | None] = mapped_column(String(500))
    version: Mapped[str | None] = mapped_column(String(64))
    derivative_of: Mapped[str | None] = mapped_column(String(64))  # a design id or content hash
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    okh: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the imported manifest, if any
    # Lower-cased title, description, authors, licence and tags: one portable LIKE search on
    # SQLite and PostgreSQL alike, instead of casting JSON columns per dialect.
    search_text: Mapped[str] = mapped_column(Text, default="")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    visibility: Mapped[str] = mapped_column(
        String(16), default=Visibility.SHOP.value, server_default=Visibility.SHOP.value
    )

    # selectin: every read of a design shows its files, and a list page of 200 designs
    # loads them in one extra query rather than 200.
    files: Mapped[list[DesignFile]] = relationship(
        back_populates="design",
        cascade="all, delete-orphan",
        lazy="selectin",
        order_by="DesignFile.name",
    )
    # selectin for the same reason: the design page and the by-hash metadata show the chain.
    provenance: Mapped[list[DesignProvenance]] = relationship(
        back_populates="design",
        cascade="all, delete-orphan",
        lazy="selectin",
        order_by="DesignProvenance.position",
    )


class DesignFile(Base):
    """One file of a design, stored under a generated name."""

    __tablename__ = "design_files"
    __table_args__ = (UniqueConstraint("design_id", "name", name="uq_design_files_design_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    design_id: Mapped[int] = mapped_column(ForeignKey("designs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))  # as uploaded (base name), for display
    kind: Mapped[str] = mapped_column(String(16))  # stl, 3mf, scad, gcode, svg, dxf
    stored_name: Mapped[str] = mapped_column(String(100))  # generated; the file on disk
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int]
    analysis: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    design: Mapped[Design] = relationship(back_populates="files", lazy="raise")


class DesignProvenance(Base):
    """One hop of the way a design travelled to this shop, oldest first.

    An import copies the source shop's chain and appends its own hop: where the design was
    fetched from, when, and under which hash. A design made here has no rows.
    """

    __tablename__ = "design_provenance"
    __table_args__ = (
        UniqueConstraint("design_id", "position", name="uq_design_provenance_design_position"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    design_id: Mapped[int] = mapped_column(ForeignKey("designs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int]  # 0 is the oldest hop
    shop_url: Mapped[str] = mapped_column(String(500))  # the base URL of the shop it came from
    shop_id: Mapped[str | None] = mapped_column(String(128))  # the shop's network id, if known
    source_url: Mapped[str] = mapped_column(String(1000))  # the by-hash URL that was fetched
    content_hash: Mapped[str] = mapped_column(String(64))
    fetched_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    imported_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    design: Mapped[Design] = relationship(back_populates="provenance", lazy="raise")
