"""The demo shop's prices: machine and material rates, and a plan for the member."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.accounts import service as account_service
from microfactory.costs import service as cost_service
from microfactory.costs.models import MembershipPlan
from microfactory.costs.schemas import PlanCreate
from microfactory.machines.models import MachineKind


async def seed(*, session: AsyncSession) -> None:
    """Price the demo shop and put the member on a plan (once)."""
    if (await session.execute(select(MembershipPlan.id).limit(1))).first() is not None:
        return
    rates = {
        MachineKind.FDM_PRINTER: 200,
        MachineKind.CNC_MILL: 800,
        MachineKind.LASER_CUTTER: 600,
    }
    for kind, cents in rates.items():
        await cost_service.set_machine_rate(session=session, kind=kind, cents_per_hour=cents)
    for material, cents in {"PLA": 2500, "PETG": 3000, "plywood": 1200}.items():
        await cost_service.set_material_rate(session=session, material=material, cents_per_kg=cents)
    plan = await cost_service.create_plan(
        session=session,
        plan_in=PlanCreate(name="Maker", included_hours_per_month=5, monthly_fee_cents=2000),
    )
    member = await account_service.get_by_username(session=session, username="member")
    if member is not None:
        await cost_service.set_membership(session=session, user_id=member.id, plan_id=plan.id)
