"""Bookings and the rules around them: policy, opening hours, certifications, maintenance."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import Date, Enum, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from microfactory.db import Base, UTCDateTime, utcnow
from microfactory.machines.models import Machine, MachineKind


def _enum(cls: type[StrEnum], length: int) -> Enum:
    return Enum(
        cls, native_enum=False, length=length, values_callable=lambda e: [m.value for m in e]
    )


class BookingStatus(StrEnum):
    """booked → checked_in → completed; or cancelled, or no_show (both free the slot)."""

    BOOKED = "booked"
    CHECKED_IN = "checked_in"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    NO_SHOW = "no_show"


# Statuses that hold machine time. The PostgreSQL exclusion constraint and the SQLite trigger
# (migration 0003b) repeat this list: change all three together.
HOLDING_STATUSES = (BookingStatus.BOOKED, BookingStatus.CHECKED_IN, BookingStatus.COMPLETED)


class BookingPolicy(Base):
    """The shop's booking rules: one row (id 1), editable by operators."""

    __tablename__ = "booking_policy"

    id: Mapped[int] = mapped_column(primary_key=True)
    horizon_days: Mapped[int] = mapped_column(default=14)
    cancel_cutoff_minutes: Mapped[int] = mapped_column(default=120)
    checkin_grace_minutes: Mapped[int] = mapped_column(default=15)
    max_future_bookings: Mapped[int] = mapped_column(default=10)
    reminder_minutes: Mapped[int] = mapped_column(default=60)
    noshow_limit: Mapped[int] = mapped_column(default=3)  # this many no-shows ...
    noshow_window_days: Mapped[int] = mapped_column(default=30)  # ... within this window ...
    suspension_days: Mapped[int] = mapped_column(default=14)  # ... suspend booking this long


class MachineProfile(Base):
    """Per-machine booking and energy settings, kept beside the machine registry."""

    __tablename__ = "machine_profiles"

    machine_id: Mapped[int] = mapped_column(
        ForeignKey("machines.id", ondelete="CASCADE"), primary_key=True
    )
    slot_minutes: Mapped[int] = mapped_column(default=15)
    buffer_minutes: Mapped[int] = mapped_column(default=0)  # cleaning time after each booking
    requires_training: Mapped[bool] = mapped_column(default=False)
    # The machine, for its power rating (kept on Machine since 0006b; shown with these settings).
    machine: Mapped[Machine] = relationship(lazy="joined")

    @property
    def power_w(self) -> float | None:
        """Return the machine's rated power in W (it lives on Machine)."""
        return self.machine.power_w if self.machine is not None else None

    @power_w.setter
    def power_w(self, value: float | None) -> None:
        self.machine.power_w = value


class OpeningHours(Base):
    """One opening interval of the weekly schedule, in the shop's local time."""

    __tablename__ = "opening_hours"

    id: Mapped[int] = mapped_column(primary_key=True)
    weekday: Mapped[int]  # 0 = Monday
    open_minute: Mapped[int]  # minutes after local midnight
    close_minute: Mapped[int]  # up to 1440 (midnight at the end of the day)


class Closure(Base):
    """Whole local days the shop is closed (holidays), inclusive."""

    __tablename__ = "closures"

    id: Mapped[int] = mapped_column(primary_key=True)
    first_day: Mapped[dt.date] = mapped_column(Date)
    last_day: Mapped[dt.date] = mapped_column(Date)
    reason: Mapped[str] = mapped_column(String(200), default="")


class Booking(Base):
    """A member's claim on a machine for [start_at, end_at), plus the machine's buffer."""

    __tablename__ = "bookings"
    __table_args__ = (
        Index("ix_bookings_machine_start", "machine_id", "start_at"),
        Index("ix_bookings_user_start", "user_id", "start_at"),
        Index("ix_bookings_status_start", "status", "start_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    start_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    end_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # end_at plus the machine's buffer at booking time: the span no other booking may touch.
    occupied_until: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    status: Mapped[BookingStatus] = mapped_column(
        _enum(BookingStatus, 16), default=BookingStatus.BOOKED
    )
    note: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    checked_in_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    cancelled_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    cancel_reason: Mapped[str | None] = mapped_column(String(200))
    released_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())  # no-show release
    reminded_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class BookingLock(Base):
    """A row per machine written first by every booking transaction on SQLite.

    SQLite has no exclusion constraints; writing this row takes the database's write lock
    before the conflict check, so concurrent checks run one after another.
    """

    __tablename__ = "booking_locks"

    machine_id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(default=0)


class Certification(Base):
    """Training granted by an operator: for one machine or a whole machine kind."""

    __tablename__ = "certifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    machine_id: Mapped[int | None] = mapped_column(ForeignKey("machines.id", ondelete="CASCADE"))
    machine_kind: Mapped[MachineKind | None] = mapped_column(_enum(MachineKind, 32))
    granted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    granted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    note: Mapped[str] = mapped_column(String(200), default="")


class Quota(Base):
    """Hours per week a member may book on machines of one kind."""

    __tablename__ = "booking_quotas"

    machine_kind: Mapped[MachineKind] = mapped_column(_enum(MachineKind, 32), primary_key=True)
    hours_per_week: Mapped[float]


class Suspension(Base):
    """A period a member may not book, after repeated no-shows (or set by an operator)."""

    __tablename__ = "booking_suspensions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    starts_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str] = mapped_column(String(200), default="")
    lifted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class MaintenanceBlock(Base):
    """Machine time an operator has blocked for maintenance."""

    __tablename__ = "maintenance_blocks"
    __table_args__ = (Index("ix_maintenance_blocks_machine_start", "machine_id", "start_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id", ondelete="CASCADE"))
    start_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    end_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    removed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class CalendarToken(Base):
    """A revocable secret in a member's private iCalendar feed URL (only its hash is kept)."""

    __tablename__ = "calendar_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
