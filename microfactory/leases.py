"""The scheduler's lease: which process runs the periodic tasks, until when (a model only)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from microfactory.db import Base, UTCDateTime


class SchedulerLease(Base):
    """Who runs the scheduled tasks, until when."""

    __tablename__ = "scheduler_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    acquired_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
