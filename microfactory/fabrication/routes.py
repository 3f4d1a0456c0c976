"""Slicer profile endpoints, per machine: operators read and edit them."""

from __future__ import annotations

from fastapi import APIRouter

from microfactory.deps import SessionDep, StaffUser
from microfactory.fabrication import service
from microfactory.fabrication.schemas import SlicerProfileRead, SlicerProfileUpdate
from microfactory.machines import service as machine_service
from microfactory.types import Id

router = APIRouter(prefix="/api/v1/machines", tags=["machines"])


@router.get("/{machine_id:int}/slicer-profile", response_model=SlicerProfileRead)
async def get_profile(machine_id: Id, session: SessionDep, _user: StaffUser) -> SlicerProfileRead:
    """Return a printer's PrusaSlicer profile, generated if no one edited it (operators)."""
    machine = await machine_service.get_or_raise(session=session, machine_id=machine_id)
    return await service.read(session=session, machine=machine)


@router.put("/{machine_id:int}/slicer-profile", response_model=SlicerProfileRead)
async def put_profile(
    machine_id: Id, body: SlicerProfileUpdate, session: SessionDep, user: StaffUser
) -> SlicerProfileRead:
    """Replace a printer's profile with an edited .ini (operators)."""
    machine = await machine_service.get_or_raise(session=session, machine_id=machine_id)
    await service.put(session=session, machine=machine, profile_text=body.profile, by=user)
    return await service.read(session=session, machine=machine)


@router.delete("/{machine_id:int}/slicer-profile", response_model=SlicerProfileRead)
async def reset_profile(machine_id: Id, session: SessionDep, _user: StaffUser) -> SlicerProfileRead:
    """Drop the edited profile and go back to the generated one (operators)."""
    machine = await machine_service.get_or_raise(session=session, machine_id=machine_id)
    await service.reset(session=session, machine=machine)
    return await service.read(session=session, machine=machine)
