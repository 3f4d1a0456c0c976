"""Booking request and response bodies; times must carry a time zone (a naive time is a 422)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from microfactory.bookings.models import BookingStatus
from microfactory.machines.models import MachineKind
from microfactory.types import BodyId, Bool, Day, Int, Number, Timestamp


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BookingCreate(_Strict):
    """A request to book a machine for [start, end)."""

    machine_id: BodyId
    start: Timestamp
    end: Timestamp
    note: str = Field("", max_length=500)
    user_id: BodyId | None = None  # operators may book on a member's behalf


class BookingCancel(_Strict):
    """Why a booking is cancelled (optional)."""

    reason: str | None = Field(None, max_length=200)


class BookingRead(BaseModel):
    """A booking as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    machine_id: int
    user_id: int
    start_at: dt.datetime
    end_at: dt.datetime
    occupied_until: dt.datetime
    status: BookingStatus
    note: str
    created_at: dt.datetime
    checked_in_at: dt.datetime | None
    cancelled_at: dt.datetime | None
    cancel_reason: str | None
    released_at: dt.datetime | None


class BusyInterval(BaseModel):
    """Machine time that is taken, without saying by whom (unless it is the caller)."""

    machine_id: int
    start_at: dt.datetime
    end_at: dt.datetime
    kind: Literal["booking", "buffer", "maintenance"]
    booking_id: int | None = None  # only for the caller's own bookings
    mine: bool = False


class PolicyRead(BaseModel):
    """The shop's booking rules."""

    model_config = ConfigDict(from_attributes=True)

    horizon_days: int
    cancel_cutoff_minutes: int
    checkin_grace_minutes: int
    max_future_bookings: int
    reminder_minutes: int
    noshow_limit: int
    noshow_window_days: int
    suspension_days: int


class PolicyUpdate(_Strict):
    """Changes to the shop's booking rules (operators)."""

    horizon_days: Int | None = Field(None, ge=1, le=366)
    cancel_cutoff_minutes: Int | None = Field(None, ge=0, le=7 * 24 * 60)
    checkin_grace_minutes: Int | None = Field(None, ge=1, le=240)
    max_future_bookings: Int | None = Field(None, ge=1, le=1000)
    reminder_minutes: Int | None = Field(None, ge=0, le=7 * 24 * 60)
    noshow_limit: Int | None = Field(None, ge=1, le=100)
    noshow_window_days: Int | None = Field(None, ge=1, le=366)
    suspension_days: Int | None = Field(None, ge=0, le=366)


class ProfileRead(BaseModel):
    """A machine's booking settings and power rating."""

    model_config = ConfigDict(from_attributes=True)

    machine_id: int
    slot_minutes: int
    buffer_minutes: int
    requires_training: bool
    power_w: float | None


class ProfileUpdate(_Strict):
    """Changes to a machine's booking settings (operators)."""

    slot_minutes: Int | None = Field(None, ge=5, le=24 * 60)
    buffer_minutes: Int | None = Field(None, ge=0, le=24 * 60)
    requires_training: Bool | None = None
    power_w: Number | None = Field(None, ge=0, le=100_000)

    @field_validator("slot_minutes")
    @classmethod
    def _divides_day(cls, v: int | None) -> int | None:
        if v is not None and (24 * 60) % v:
            raise ValueError("slot_minutes must divide a day (5, 10, 15, 20, 30, 60, 120 ...)")
        return v


class OpeningInterval(_Strict):
    """One interval of the weekly schedule in the shop's local time, e.g. 09:00 to 18:00."""

    weekday: Int = Field(ge=0, le=6, description="0 = Monday")
    opens: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    closes: str = Field(pattern=r"^([01]\d|2[0-4]):[0-5]\d$")

    @model_validator(mode="after")
    def _order(self) -> OpeningInterval:
        if self.closes > "24:00":
            raise ValueError("closes must be at most 24:00")
        if self.closes <= self.opens:
            raise ValueError(f"closes ({self.closes}) must be after opens ({self.opens})")
        return self


class OpeningHoursUpdate(_Strict):
    """The whole weekly schedule; an empty list means open around the clock."""

    intervals: list[OpeningInterval] = Field(max_length=100)


class ClosureCreate(_Strict):
    """Whole local days the shop is closed."""

    first_day: Day
    last_day: Day
    reason: str = Field("", max_length=200)

    @model_validator(mode="after")
    def _order(self) -> ClosureCreate:
        if self.last_day < self.first_day:
            raise ValueError("last_day must not be before first_day")
        return self


class ClosureRead(BaseModel):
    """A closure."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    first_day: dt.date
    last_day: dt.date
    reason: str


class CertificationCreate(_Strict):
    """Training granted to a member for one machine or a machine kind (operators)."""

    user_id: BodyId
    machine_id: BodyId | None = None
    machine_kind: MachineKind | None = None
    expires_at: Timestamp | None = None
    note: str = Field("", max_length=200)

    @model_validator(mode="after")
    def _scope(self) -> CertificationCreate:
        if (self.machine_id is None) == (self.machine_kind is None):
            raise ValueError("give exactly one of machine_id or machine_kind")
        return self


class CertificationRead(BaseModel):
    """A certification."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    user_id: int
    machine_id: int | None
    machine_kind: MachineKind | None
    granted_by_id: int | None
    granted_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    note: str


class QuotaSet(_Strict):
    """Hours per week per member on machines of a kind; null removes the quota."""

    hours_per_week: Number | None = Field(None, gt=0, le=168)


class QuotaRead(BaseModel):
    """A quota."""

    model_config = ConfigDict(from_attributes=True)

    machine_kind: MachineKind
    hours_per_week: float


class SuspensionRead(BaseModel):
    """A booking suspension."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    user_id: int
    starts_at: dt.datetime
    ends_at: dt.datetime
    reason: str
    lifted_at: dt.datetime | None


class MaintenanceCreate(_Strict):
    """Machine time to block; on_conflict says what to do with overlapping bookings."""

    machine_id: BodyId
    start: Timestamp
    end: Timestamp
    reason: str = Field("", max_length=2000)
    on_conflict: Literal["cancel", "keep"] | None = None

    @model_validator(mode="after")
    def _order(self) -> MaintenanceCreate:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class MaintenanceRead(BaseModel):
    """A maintenance block, with the bookings it cancelled or kept."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    machine_id: int
    start_at: dt.datetime
    end_at: dt.datetime
    reason: str
    created_by_id: int | None
    created_at: dt.datetime
    removed_at: dt.datetime | None
    cancelled_booking_ids: list[int] = Field(default_factory=list)
    kept_booking_ids: list[int] = Field(default_factory=list)


class FeedTokenCreated(BaseModel):
    """A member's private calendar feed URL; the token is shown this once."""

    url: str
    token: str
    prefix: str
