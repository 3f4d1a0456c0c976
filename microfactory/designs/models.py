"""Designs of the commons and their files."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from microfactory.db import Base, TimestampMixin


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

    # selectin: every read of a design shows its files, and a list page of 200 designs
    # loads them in one extra query rather than 200.
    files: Mapped[list[DesignFile]] = relationship(
        back_populates="design",
        cascade="all, delete-orphan",
        lazy="selectin",
        order_by="DesignFile.name",
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
