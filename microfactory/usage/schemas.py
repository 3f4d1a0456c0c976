"""Usage report request and response bodies."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from microfactory.types import Number


class UsageRead(BaseModel):
    """One usage record."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    user_id: int
    machine_id: int
    job_id: int | None
    booking_id: int | None
    source: str
    started_at: dt.datetime
    ended_at: dt.datetime
    active_s: float
    material_kind: str | None
    material_g: float | None
    energy_wh: float | None
    outcome: str
    note: str
    corrects_id: int | None
    created_at: dt.datetime


class UsageSummaryRow(BaseModel):
    """Usage summed per member, machine, or both, over a period."""

    user_id: int | None = None
    username: str | None = None
    machine_id: int | None = None
    machine_name: str | None = None
    sessions: int
    active_h: float
    material_g: float
    energy_kwh: float


class UtilisationRow(BaseModel):
    """How much of a machine's open time one local day was used."""

    machine_id: int
    machine_name: str
    day: dt.date
    used_h: float
    open_h: float
    share: float | None  # used / open; None when the shop was closed all day


class CorrectionCreate(BaseModel):
    """A compensating entry: negative amounts take away, positive ones add (operators)."""

    model_config = ConfigDict(extra="forbid")

    active_s: Number = Field(ge=-(10**7), le=10**7)
    material_g: Number | None = Field(None, ge=-(10**6), le=10**6)
    note: str = Field(min_length=3, max_length=500)
