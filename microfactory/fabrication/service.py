"""Slicer profile rules: one per FDM printer, generated until an operator edits it."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.accounts.models import User
from microfactory.errors import ConflictError
from microfactory.fabrication.models import SlicerProfile
from microfactory.fabrication.prusaslicer import parse_profile, profile_for_machine
from microfactory.fabrication.schemas import SlicerProfileRead
from microfactory.machines.models import Machine, MachineKind


def _check_fdm(machine: Machine) -> None:
    if machine.kind is not MachineKind.FDM_PRINTER:
        raise ConflictError(
            f"machine {machine.name!r} is a {machine.kind.value.replace('_', ' ')}; "
            "only FDM printers have a slicer profile"
        )


async def get_stored(*, session: AsyncSession, machine: Machine) -> SlicerProfile | None:
    """Return the operator-edited profile of a machine, if there is one."""
    return await session.get(SlicerProfile, machine.id)


async def profile_text_for(
    *, session: AsyncSession, machine: Machine, material: str | None = None
) -> str:
    """Return the profile to slice with for a machine: the edited one, else a generated one.

    `material` only shapes a generated profile; an operator's profile is used as written.
    """
    _check_fdm(machine)
    stored = await get_stored(session=session, machine=machine)
    if stored is not None:
        return stored.profile_text
    return profile_for_machine(machine, material)


async def read(*, session: AsyncSession, machine: Machine) -> SlicerProfileRead:
    """Return a machine's profile for the API."""
    _check_fdm(machine)
    stored = await get_stored(session=session, machine=machine)
    if stored is None:
        return SlicerProfileRead(
            machine_id=machine.id,
            profile=profile_for_machine(machine),
            generated=True,
            updated_at=None,
            updated_by_id=None,
        )
    return SlicerProfileRead(
        machine_id=machine.id,
        profile=stored.profile_text,
        generated=False,
        updated_at=stored.updated_at,
        updated_by_id=stored.updated_by_id,
    )


async def put(
    *, session: AsyncSession, machine: Machine, profile_text: str, by: User
) -> SlicerProfile:
    """Store an operator's profile after checking it parses as a PrusaSlicer .ini."""
    _check_fdm(machine)
    parse_profile(profile_text)
    stored = await get_stored(session=session, machine=machine)
    if stored is None:
        stored = SlicerProfile(machine_id=machine.id, profile_text=profile_text)
        session.add(stored)
    stored.profile_text = profile_text
    stored.updated_by_id = by.id
    await session.flush()
    return stored


async def reset(*, session: AsyncSession, machine: Machine) -> None:
    """Forget an edited profile, so a generated one is used again."""
    _check_fdm(machine)
    stored = await get_stored(session=session, machine=machine)
    if stored is not None:
        await session.delete(stored)
        await session.flush()
