"""Rates, plans and statements."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from microfactory.machines.models import MachineKind
from microfactory.types import BodyId, Int, Number


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MachineRateSet(_Strict):
    """What an hour on a machine kind costs."""

    cents_per_hour: Int = Field(ge=0, le=10**7)


class MaterialRateSet(_Strict):
    """What a kilogram of a material costs (so a gram costs a thousandth of it)."""

    cents_per_kg: Int = Field(ge=0, le=10**8)


class RatesRead(BaseModel):
    """Every rate of the shop."""

    machine_kinds: dict[MachineKind, int]  # cents per hour
    materials: dict[str, int]  # cents per kg


class PlanCreate(_Strict):
    """A membership plan."""

    name: str = Field(min_length=1, max_length=100)
    included_hours_per_month: Number = Field(0.0, ge=0, le=744)
    monthly_fee_cents: Int = Field(0, ge=0, le=10**7)


class PlanRead(BaseModel):
    """A membership plan."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    included_hours_per_month: float
    monthly_fee_cents: int


class MembershipSet(_Strict):
    """Put a member on a plan (or none with null)."""

    plan_id: BodyId | None


class StatementLine(BaseModel):
    """One usage record priced."""

    record_id: int
    started_at: dt.datetime
    machine_id: int
    machine_name: str
    machine_kind: MachineKind
    source: str
    hours: float
    credited_hours: float
    billed_hours: float
    machine_cents: int
    material_kind: str | None
    material_g: float
    material_cents: int
    total_cents: int


class Statement(BaseModel):
    """A member's monthly statement, computed from the usage log with credits applied first."""

    user_id: int
    username: str
    month: str
    plan: str | None
    included_hours: float
    used_hours: float
    credited_hours: float
    billed_hours: float
    plan_fee_cents: int
    machine_cents: int
    material_cents: int
    total_cents: int
    lines: list[StatementLine]
