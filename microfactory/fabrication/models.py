"""Per-machine slicer profiles, edited by operators."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Text
from sqlalchemy.orm import Mapped, mapped_column

from microfactory.db import Base, TimestampMixin


class SlicerProfile(TimestampMixin, Base):
    """A PrusaSlicer .ini profile for one machine; without a row, one is generated."""

    __tablename__ = "slicer_profiles"

    machine_id: Mapped[int] = mapped_column(
        ForeignKey("machines.id", ondelete="CASCADE"), primary_key=True
    )
    profile_text: Mapped[str] = mapped_column(Text)
    updated_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
