"""Cost rules: rates, plans, and the monthly statement summed from the usage log.

Money is integer cents. Each line is rounded half-up once; totals add rounded lines, so the
CSV adds up exactly. Included plan hours are credits: they cover the month's machine hours in
order of use before anything is charged. Material is always charged.
"""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.accounts.models import User
from microfactory.costs.models import MachineKindRate, MaterialRate, MembershipPlan, PlanMembership
from microfactory.costs.schemas import PlanCreate
from microfactory.errors import ConflictError, NotFoundError
from microfactory.machines.models import Machine, MachineKind
from microfactory.usage import reports
from microfactory.usage.models import UsageRecord


def _cents(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


async def rates(*, session: AsyncSession) -> dict[str, dict[Any, int]]:
    """Return every rate: cents per hour by machine kind, cents per kg by material."""
    kinds = {
        r.machine_kind: r.cents_per_hour
        for r in (await session.execute(select(MachineKindRate))).scalars()
    }
    materials = {
        r.material_kind: r.cents_per_kg
        for r in (await session.execute(select(MaterialRate))).scalars()
    }
    return {"machine_kinds": kinds, "materials": materials}


async def set_machine_rate(
    *, session: AsyncSession, kind: MachineKind, cents_per_hour: int
) -> None:
    """Set what an hour on a machine kind costs."""
    rate = await session.get(MachineKindRate, kind)
    if rate is None:
        session.add(MachineKindRate(machine_kind=kind, cents_per_hour=cents_per_hour))
    else:
        rate.cents_per_hour = cents_per_hour
    await session.flush()


async def set_material_rate(*, session: AsyncSession, material: str, cents_per_kg: int) -> None:
    """Set what a kilogram of a material costs."""
    rate = await session.get(MaterialRate, material)
    if rate is None:
        session.add(MaterialRate(material_kind=material, cents_per_kg=cents_per_kg))
    else:
        rate.cents_per_kg = cents_per_kg
    await session.flush()


async def list_plans(*, session: AsyncSession) -> list[MembershipPlan]:
    """Return every membership plan."""
    return list(
        (await session.execute(select(MembershipPlan).order_by(MembershipPlan.name))).scalars()
    )


async def create_plan(*, session: AsyncSession, plan_in: PlanCreate) -> MembershipPlan:
    """Create a membership plan; names are unique."""
    plan = MembershipPlan(**plan_in.model_dump())
    session.add(plan)
    try:
        await session.flush()
    except IntegrityError:
        raise ConflictError(f"a plan named {plan_in.name!r} already exists") from None
    return plan


async def _plan_or_raise(session: AsyncSession, plan_id: int) -> MembershipPlan:
    plan = await session.get(MembershipPlan, plan_id)
    if plan is None:
        raise NotFoundError(f"plan {plan_id} not found")
    return plan


async def update_plan(
    *, session: AsyncSession, plan_id: int, plan_in: PlanCreate
) -> MembershipPlan:
    """Change a plan's name, included hours or fee; names stay unique.

    Statements are computed from the plan as it is, so a change applies to every month shown
    from now on (a shop that wants old months kept makes a new plan and moves its members).
    """
    plan = await _plan_or_raise(session, plan_id)
    taken = await session.execute(
        select(MembershipPlan.id).where(
            MembershipPlan.name == plan_in.name, MembershipPlan.id != plan_id
        )
    )
    if taken.first() is not None:
        raise ConflictError(f"a plan named {plan_in.name!r} already exists")
    for field, value in plan_in.model_dump().items():
        setattr(plan, field, value)
    await session.flush()
    return plan


async def delete_plan(*, session: AsyncSession, plan_id: int) -> None:
    """Delete a plan nobody is on; members must be moved to another plan (or none) first."""
    plan = await _plan_or_raise(session, plan_id)
    members = await session.execute(
        select(PlanMembership.user_id).where(PlanMembership.plan_id == plan_id)
    )
    count = len(members.all())
    if count:
        raise ConflictError(
            f"{count} member{'s are' if count > 1 else ' is'} on the plan {plan.name!r}: "
            "put them on another plan, or on none, first"
        )
    await session.delete(plan)
    await session.flush()


async def set_membership(*, session: AsyncSession, user_id: int, plan_id: int | None) -> None:
    """Put a member on a plan, or on none."""
    if await session.get(User, user_id) is None:
        raise NotFoundError(f"user {user_id} not found")
    current = await session.get(PlanMembership, user_id)
    if plan_id is None:
        if current is not None:
            await session.delete(current)
        await session.flush()
        return
    if await session.get(MembershipPlan, plan_id) is None:
        raise NotFoundError(f"plan {plan_id} not found")
    if current is None:
        session.add(PlanMembership(user_id=user_id, plan_id=plan_id))
    else:
        current.plan_id = plan_id
    await session.flush()


async def plan_of(*, session: AsyncSession, user_id: int) -> MembershipPlan | None:
    """Return the member's plan, if any."""
    result = await session.execute(
        select(MembershipPlan)
        .join(PlanMembership, PlanMembership.plan_id == MembershipPlan.id)
        .where(PlanMembership.user_id == user_id)
    )
    return result.scalar_one_or_none()


async def statement(
    *, session: AsyncSession, viewer: User, user_id: int, month: str, tz: ZoneInfo
) -> dict[str, Any]:
    """Compute a member's statement for a local calendar month ("YYYY-MM")."""
    if not viewer.is_staff and user_id != viewer.id:
        raise NotFoundError(f"user {user_id} not found")
    member = await session.get(User, user_id)
    if member is None:
        raise NotFoundError(f"user {user_id} not found")
    start, end = reports.month_bounds(month, tz)
    table = await rates(session=session)
    plan = await plan_of(session=session, user_id=user_id)
    included = Decimal(str(plan.included_hours_per_month)) if plan else Decimal(0)
    remaining = included
    result = await session.execute(
        select(UsageRecord, Machine)
        .join(Machine, Machine.id == UsageRecord.machine_id)
        .where(
            UsageRecord.user_id == user_id,
            UsageRecord.started_at >= start,
            UsageRecord.started_at < end,
        )
        .order_by(UsageRecord.started_at, UsageRecord.id)
    )
    lines = []
    totals = {"used": Decimal(0), "credited": Decimal(0), "billed": Decimal(0)}
    machine_cents = material_cents = 0
    for record, machine in result.all():
        hours = Decimal(str(record.active_s)) / 3600
        credited = min(remaining, hours) if hours > 0 else Decimal(0)
        remaining -= credited
        billed = hours - credited
        per_hour = Decimal(table["machine_kinds"].get(machine.kind, 0))
        grams = Decimal(str(record.material_g or 0))
        per_kg = Decimal(table["materials"].get(record.material_kind or "", 0))
        m_cents = _cents(billed * per_hour)
        g_cents = _cents(grams * per_kg / 1000)
        machine_cents += m_cents
        material_cents += g_cents
        totals["used"] += hours
        totals["credited"] += credited
        totals["billed"] += billed
        lines.append(
            {
                "record_id": record.id,
                "started_at": record.started_at,
                "machine_id": machine.id,
                "machine_name": machine.name,
                "machine_kind": machine.kind,
                "source": record.source,
                "hours": round(float(hours), 3),
                "credited_hours": round(float(credited), 3),
                "billed_hours": round(float(billed), 3),
                "machine_cents": m_cents,
                "material_kind": record.material_kind,
                "material_g": round(float(grams), 1),
                "material_cents": g_cents,
                "total_cents": m_cents + g_cents,
            }
        )
    fee = plan.monthly_fee_cents if plan else 0
    return {
        "user_id": member.id,
        "username": member.username,
        "month": month,
        "plan": plan.name if plan else None,
        "included_hours": float(included),
        "used_hours": round(float(totals["used"]), 3),
        "credited_hours": round(float(totals["credited"]), 3),
        "billed_hours": round(float(totals["billed"]), 3),
        "plan_fee_cents": fee,
        "machine_cents": machine_cents,
        "material_cents": material_cents,
        "total_cents": fee + machine_cents + material_cents,
        "lines": lines,
    }


def current_month(now: dt.datetime, tz: ZoneInfo) -> str:
    """Return the local month of `now` as "YYYY-MM"."""
    return now.astimezone(tz).strftime("%Y-%m")
