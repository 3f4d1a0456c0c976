"""Machine registry endpoints: members read, operators and admins write."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from microfactory.deps import AnyUser, SessionDep, StaffUser
from microfactory.machines import service
from microfactory.machines.fleet import Fleet
from microfactory.machines.schemas import (
    CommandRequest,
    CommandResult,
    MachineCreate,
    MachineRead,
    MachineUpdate,
)

router = APIRouter(prefix="/api/v1/machines", tags=["machines"])


def _fleet(request: Request) -> Fleet:
    fleet: Fleet = request.app.state.fleet
    return fleet


@router.get("", response_model=list[MachineRead])
async def list_machines(request: Request, session: SessionDep, _user: AnyUser) -> list[MachineRead]:
    """List the shop's machines with their live status."""
    fleet = _fleet(request)
    return [
        service.to_read(m, fleet.status(m)) for m in await service.list_machines(session=session)
    ]


@router.post("", response_model=MachineRead, status_code=status.HTTP_201_CREATED)
async def create_machine(
    machine_in: MachineCreate, request: Request, session: SessionDep, _user: StaffUser
) -> MachineRead:
    """Register a machine (operators, admins)."""
    machine = await service.create(session=session, machine_in=machine_in)
    return service.to_read(machine, _fleet(request).status(machine))


@router.get("/{machine_id}", response_model=MachineRead)
async def get_machine(
    machine_id: int, request: Request, session: SessionDep, _user: AnyUser
) -> MachineRead:
    """Return one machine with its live status."""
    machine = await service.get_or_raise(session=session, machine_id=machine_id)
    return service.to_read(machine, _fleet(request).status(machine))


@router.patch("/{machine_id}", response_model=MachineRead)
async def update_machine(
    machine_id: int,
    machine_in: MachineUpdate,
    request: Request,
    session: SessionDep,
    _user: StaffUser,
) -> MachineRead:
    """Change a machine (operators, admins)."""
    machine = await service.get_or_raise(session=session, machine_id=machine_id)
    machine = await service.update(session=session, machine=machine, machine_in=machine_in)
    return service.to_read(machine, _fleet(request).status(machine))


@router.delete("/{machine_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_machine(machine_id: int, session: SessionDep, _user: StaffUser) -> Response:
    """Remove a machine (operators, admins)."""
    machine = await service.get_or_raise(session=session, machine_id=machine_id)
    await service.delete(session=session, machine=machine)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{machine_id}/commands", response_model=CommandResult)
async def send_commands(
    machine_id: int,
    body: CommandRequest,
    request: Request,
    session: SessionDep,
    _user: StaffUser,
) -> CommandResult:
    """Send raw G-code lines to an idle machine (operators, admins)."""
    machine = await service.get_or_raise(session=session, machine_id=machine_id)
    results = await _fleet(request).send_commands(machine, body.lines)
    return CommandResult(results=results)
