"""Rates and membership plans: what the shop's shared costs are split by."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import Enum, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from microfactory.db import Base, UTCDateTime, utcnow
from microfactory.machines.models import MachineKind


def _enum(cls: type[StrEnum], length: int) -> Enum:
    return Enum(
        cls, native_enum=False, length=length, values_callable=lambda e: [m.value for m in e]
    )


class MachineKindRate(Base):
    """What an hour on a machine of this kind costs, in cents."""

    __tablename__ = "rates_machine_kinds"

    machine_kind: Mapped[MachineKind] = mapped_column(_enum(MachineKind, 32), primary_key=True)
    cents_per_hour: Mapped[int]


class MaterialRate(Base):
    """What material costs per gram, kept per kilogram so that integer cents stay exact."""

    __tablename__ = "rates_materials"

    material_kind: Mapped[str] = mapped_column(String(64), primary_key=True)
    cents_per_kg: Mapped[int]


class MembershipPlan(Base):
    """A membership plan: machine hours included every month."""

    __tablename__ = "membership_plans"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    included_hours_per_month: Mapped[float] = mapped_column(default=0.0)
    monthly_fee_cents: Mapped[int] = mapped_column(default=0)


class PlanMembership(Base):
    """Which plan a member is on."""

    __tablename__ = "plan_memberships"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    plan_id: Mapped[int] = mapped_column(ForeignKey("membership_plans.id", ondelete="CASCADE"))
    since: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
