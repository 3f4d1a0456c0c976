"""The demo shop's booking setup: opening hours and machine profiles."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.bookings import service
from microfactory.bookings.models import OpeningHours
from microfactory.bookings.schemas import OpeningHoursUpdate, OpeningInterval, ProfileUpdate
from microfactory.machines import service as machine_service

# name -> (power W, slot minutes, buffer minutes, training required)
PROFILES = {
    "Prusa MK3S #1": (120.0, 15, 0, False),
    "Prusa MK3S #2": (120.0, 15, 0, False),
    "Ender 3 (manual)": (100.0, 15, 0, False),
    "Shapeoko CNC": (700.0, 30, 15, False),
    "Laser cutter 40W": (300.0, 30, 15, True),
}


async def seed(*, session: AsyncSession) -> None:
    """Open the demo shop 08:00-20:00 every day, with each machine's booking profile."""
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
