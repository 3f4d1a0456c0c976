"""The shop's public profile, its report sequence, and the push status per hub."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from microfactory.db import Base, UTCDateTime, utcnow


class ShopProfile(Base):
    """The shop's public profile, as its capacity report shows it (one row, id 1)."""

    __tablename__ = "network_profile"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(String(500), default="")
    city: Mapped[str] = mapped_column(String(100), default="")
    country: Mapped[str] = mapped_column(String(2), default="")  # ISO 3166-1 alpha-2
    lat: Mapped[float | None]  # degrees, WGS 84, as entered (rounded in the report if asked)
    lon: Mapped[float | None]
    round_to_city: Mapped[bool] = mapped_column(default=False)
    access_type: Mapped[str] = mapped_column(String(40), default="Restricted")
    contact: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ReportSequence(Base):
    """The last capacity report sequence issued (one row, id 1): it survives restarts."""

    __tablename__ = "network_sequence"

    id: Mapped[int] = mapped_column(primary_key=True)
    last: Mapped[int] = mapped_column(BigInteger, default=0)  # at least the Unix time (s)


class PushStatus(Base):
    """How pushing the report to one hub goes: successes, the last error, the next attempt."""

    __tablename__ = "network_push_status"

    hub_url: Mapped[str] = mapped_column(String(500), primary_key=True)
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_success_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(String(500))
    last_error_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    failures: Mapped[int] = mapped_column(default=0)  # consecutive, reset by a success
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_sequence: Mapped[int | None] = mapped_column(BigInteger)  # the hub last accepted
    last_status: Mapped[str | None] = mapped_column(String(16))  # accepted, pending
    # A digest of the report's content (times and sequence left out) last accepted: a change
    # pushes again before the periodic refresh.
    last_fingerprint: Mapped[str | None] = mapped_column(String(64))
