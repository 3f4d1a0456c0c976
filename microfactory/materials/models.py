"""Materials on hand."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from microfactory.db import Base, TimestampMixin


class MaterialStock(TimestampMixin, Base):
    """One stock of a material: a spool, a sheet pile, a bar; optionally loaded on a machine."""

    __tablename__ = "materials"

    id: Mapped[int] = mapped_column(primary_key=True)
    material: Mapped[str] = mapped_column(String(64), index=True)  # PLA, PETG, plywood-3mm
    colour: Mapped[str] = mapped_column(String(64), default="")
    amount: Mapped[float] = mapped_column(default=0.0)  # in `unit`
    unit: Mapped[str] = mapped_column(String(16), default="g")
    machine_id: Mapped[int | None] = mapped_column(
        ForeignKey("machines.id", ondelete="SET NULL"), index=True
    )
    notes: Mapped[str] = mapped_column(String(500), default="")
