"""The demo shop's booking setup: opening hours, machine profiles, rates and a plan."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.accounts import service as account_service
from microfactory.bookings import service
from microfactory.bookings.models import OpeningHours
from microfactory.bookings.schemas import OpeningHoursUpdate, OpeningInterval, ProfileUpdate
from microfactory.costs import service as cost_service
from microfactory.costs.schemas import PlanCreate
from microfactory.machines import service as machine_service
from microfactory.machines.models import MachineKind

# name -> (power W, slot minutes, buffer minutes, training required)
PROFILES = {
    "Prusa MK3S #1": (120.0, 15, 0, False),
    "Prusa MK3S #2": (120.0, 15, 0, False),
    "Ender 3 (manual)": (100.0, 15, 0, False),
    "Shapeoko CNC": (700.0, 30, 15, False),
    "Laser cutter 40W": (300.0, 30, 15, True),
}


async def seed(*, session: AsyncSession) -> None:
    """Open the demo shop 08:00-20:00 every day, price it, and put the member on a plan."""
    if (await session.execute(select(OpeningHours.id).limit(1))).first() is not None:
        return
    await service.set_weekly_schedule(
        session=session,
        hours_in=OpeningHoursUpdate(
            intervals=[OpeningInterval(weekday=d, opens="08:00", closes="20:00") for d in range(7)]
        ),
    )
    for machine in await machine_service.list_machines(session=session):
        if machine.name in PROFILES:
            power, slot, buffer, training = PROFILES[machine.name]
            await service.update_profile(
                session=session,
                machine_id=machine.id,
                profile_in=ProfileUpdate(
                    power_w=power,
                    slot_minutes=slot,
                    buffer_minutes=buffer,
                    requires_training=training,
                ),
            )
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
