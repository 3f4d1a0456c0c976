"""Machine registry endpoints: members read, operators and admins write."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse

from microfactory.deps import AnyUser, SessionDep, StaffUser
from microfactory.errors import ConflictError
from microfactory.events import Actor
from microfactory.machines import service
from microfactory.machines.channel import CommandChannel
from microfactory.machines.schemas import (
    CommandRequest,
    CommandResult,
    MachineCreate,
    MachineRead,
    MachineUpdate,
)

router = APIRouter(prefix="/api/v1/machines", tags=["machines"])


def _fleet(request: Request) -> CommandChannel:
    channel: CommandChannel = request.app.state.fleet
    return channel


@router.get("", response_model=list[MachineRead])
async def list_machines(request: Request, session: SessionDep, _user: AnyUser) -> list[MachineRead]:
    """List the shop's machines with their live status."""
    fleet = _fleet(request)
    return [
        service.to_read(m, fleet.status(m)) for m in await service.list_machines(session=session)
    ]


@router.get("/stream", response_class=StreamingResponse)
async def stream_status(request: Request, _user: AnyUser) -> StreamingResponse:
    """Push live updates as Server-Sent Events: `machine` (a status) and `job` (a transition)."""
    fleet = _fleet(request)

    async def events() -> AsyncIterator[bytes]:
        # A snapshot first, so a new page is complete without waiting for changes.
        for machine_id, snapshot in fleet.snapshots().items():
            payload = json.dumps({"id": machine_id, "status": snapshot}, default=str)
            yield f"event: machine\ndata: {payload}\n\n".encode()
        updates = fleet.subscribe()
        try:
            while not await request.is_disconnected():
                try:
                    kind, item_id, data = await asyncio.wait_for(anext(updates), timeout=15)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                key = "status" if kind == "machine" else "event"
                payload = json.dumps({"id": item_id, key: data}, default=str)
                yield f"event: {kind}\ndata: {payload}\n\n".encode()
        finally:
            await updates.aclose()  # type: ignore[attr-defined]

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post("", response_model=MachineRead, status_code=status.HTTP_201_CREATED)
async def create_machine(
    machine_in: MachineCreate, request: Request, session: SessionDep, _user: StaffUser
) -> MachineRead:
    """Register a machine (operators, admins)."""
    machine = await service.create(session=session, machine_in=machine_in)
    await session.commit()  # connect only once the machine is on record
    fleet = _fleet(request)
    await fleet.sync(machine, machine.id)
    return service.to_read(machine, fleet.status(machine))


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
    fleet = _fleet(request)
    running = fleet.running_job(machine_id)
    if running is not None and (
        machine_in.connection is not None or machine_in.driver or machine_in.enabled is False
    ):
        raise ConflictError(f"machine {machine.name!r} is running job {running}; cancel it first")
    machine = await service.update(session=session, machine=machine, machine_in=machine_in)
    await session.commit()
    await fleet.sync(machine, machine.id)
    return service.to_read(machine, fleet.status(machine))


@router.delete("/{machine_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_machine(
    machine_id: int, request: Request, session: SessionDep, _user: StaffUser
) -> Response:
    """Remove a machine (operators, admins)."""
    machine = await service.get_or_raise(session=session, machine_id=machine_id)
    fleet = _fleet(request)
    running = fleet.running_job(machine_id)
    if running is not None:
        raise ConflictError(f"machine {machine.name!r} is running job {running}; cancel it first")
    await service.delete(session=session, machine=machine)
    await session.commit()
    await fleet.sync(None, machine_id)
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


@router.post("/{machine_id}/emergency-stop", response_model=MachineRead)
async def emergency_stop(
    machine_id: int, request: Request, session: SessionDep, user: StaffUser
) -> MachineRead:
    """Stop a machine now (M112, GRBL reset); its job fails (operators, admins)."""
    machine = await service.get_or_raise(session=session, machine_id=machine_id)
    fleet = _fleet(request)
    await session.commit()
    await fleet.get(machine).emergency_stop(actor=Actor.person(user.id, user.username))
    return service.to_read(machine, fleet.status(machine))
