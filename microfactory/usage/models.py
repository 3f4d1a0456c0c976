"""Usage records: append-only; corrections are compensating entries, never updates."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ForeignKey, Index, String, event
from sqlalchemy.orm import Mapped, mapped_column

from microfactory.db import Base, UTCDateTime, utcnow


class UsageRecord(Base):
    """One machine session: a job run or a booking, who, what, how long, how much."""

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_records_user_started", "user_id", "started_at"),
        Index("ix_usage_records_machine_started", "machine_id", "started_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id"))
    source: Mapped[str] = mapped_column(String(16))  # "job", "booking", "correction"
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    active_s: Mapped[float]  # seconds the machine was working (pauses excluded)
    lines_sent: Mapped[int | None]
    material_kind: Mapped[str | None] = mapped_column(String(64))
    material_g: Mapped[float | None]
    energy_wh: Mapped[float | None]  # estimate: the machine's rated power x active time
    outcome: Mapped[str] = mapped_column(String(16))  # finished, failed, cancelled
    note: Mapped[str] = mapped_column(String(500), default="")
    corrects_id: Mapped[int | None] = mapped_column(ForeignKey("usage_records.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


@event.listens_for(UsageRecord, "before_update")
@event.listens_for(UsageRecord, "before_delete")
def _append_only(_mapper: Any, _connection: Any, target: UsageRecord) -> None:
    """Refuse to change a usage record: corrections are new, compensating records."""
    raise RuntimeError(f"usage record {target.id} is append-only; append a correction instead")
