"""Machine registry endpoints: members read, operators and admins write."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse

from microfactory.deps import AnyUser, SessionDep, StaffUser
from microfactory.errors import ConflictError
from microfactory.events import Actor
from microfactory.machines import service, visibility, webcam
from microfactory.machines.channel import CommandChannel
from microfactory.machines.models import Machine
from microfactory.machines.schemas import (
    CommandRequest,
    CommandResult,
    HomeRequest,
    JogRequest,
    MachineCreate,
    MachineRead,
    MachineUpdate,
    PreheatRequest,
    ResetResult,
    TemperatureSample,
    WebcamRead,
    WebcamSettings,
)
from microfactory.types import Id

router = APIRouter(prefix="/api/v1/machines", tags=["machines"])
KEEPALIVE_S = 15.0  # a comment line on an idle stream, so proxies keep it open


def _fleet(request: Request) -> CommandChannel:
    channel: CommandChannel = request.app.state.fleet
    return channel


def announce_machine(request: Request, machine: Machine | None, machine_id: int) -> None:
    """Tell every open machine grid and machine page, in every process, that a machine was
    added, changed (renamed, disabled) or removed (`machine` None); call it after the commit.

    The announcement is a `machine` event whose status carries `name` and `edited` (or
    `removed`): a manual or disabled machine has no supervisor to report it, and a rename
    changes no status. It goes on this process's stream at once and, with several processes
    (PostgreSQL), to the others' through the job event relay: one NOTIFY per announcement,
    never merged with the status changes the machine host coalesces, so a rename followed at
    once by another change still reaches every page.
    """
    fleet = request.app.state.fleet
    if machine is None:
        status: dict[str, Any] = {"state": "offline", "message": "removed", "removed": True}
    else:
        status = {**fleet.status(machine), "name": machine.name, "edited": True}
    publish = getattr(fleet, "publish_status", None)
    if publish is not None:
        publish(machine_id, status)
    relay = getattr(request.app.state, "job_relay", None)
    if relay is not None:
        relay.forward_machine(machine_id, status)


@router.get("", response_model=list[MachineRead])
async def list_machines(request: Request, session: SessionDep, user: AnyUser) -> list[MachineRead]:
    """List the shop's machines with their live status (members see only their own jobs)."""
    fleet = _fleet(request)
    machines = await service.list_machines(session=session)
    statuses = await visibility.visible_statuses(
        session=session, user=user, statuses={m.id: fleet.status(m) for m in machines}
    )
    return [service.to_read(m, statuses[m.id]) for m in machines]


@router.get("/stream", response_class=StreamingResponse)
async def stream_status(request: Request, user: AnyUser) -> StreamingResponse:
    """Push live updates as Server-Sent Events: `machine` (a status; with `name` and `edited`
    when the machine was added or changed, `removed` when deleted), `job` (a transition),
    `booking` (a machine's booked time changed), `request` (a fabrication request between
    shops changed: its id only) and `notification` (a new message for the viewer: its kind).

    Members see job ids and G-code lines of their own jobs only, requests sent for them, and
    their own messages only.
    """
    fleet = _fleet(request)
    sessionmaker = request.app.state.sessionmaker
    viewer = visibility.Viewer.of(user)  # the user's own session is closed while we stream
    owners: dict[int, int] = {}

    async def shown(st: dict[str, Any]) -> dict[str, Any]:
        job_id = st.get("job_id")
        if job_id is not None and job_id not in owners and not visibility.sees_all(viewer):
            # The stream outlives the request's session: look owners up in a short one.
            async with sessionmaker() as session:
                owners.update(await visibility.job_owners(session=session, job_ids=[job_id]))
        return visibility.status_for(st, user=viewer, owners=owners)

    async def own_job(job_id: int) -> bool:
        if visibility.sees_all(viewer):
            return True
        if job_id not in owners:
            async with sessionmaker() as session:
                owners.update(await visibility.job_owners(session=session, job_ids=[job_id]))
        return owners.get(job_id) == viewer.id

    async def events() -> AsyncIterator[bytes]:
        # A snapshot first, so a new page is complete without waiting for changes.
        for machine_id, snapshot in fleet.snapshots().items():
            payload = json.dumps({"id": machine_id, "status": await shown(snapshot)}, default=str)
            yield f"event: machine\ndata: {payload}\n\n".encode()
        updates = fleet.subscribe()
        # One pending read survives the keep-alive timeouts: cancelling it (wait_for) would
        # end the subscription generator, and the stream would die after 15 quiet seconds.
        pending = asyncio.ensure_future(anext(updates))
        try:
            while not await request.is_disconnected():
                done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE_S)
                if not done:
                    yield b": keep-alive\n\n"
                    continue
                kind, item_id, data = pending.result()
                pending = asyncio.ensure_future(anext(updates))
                if kind == "machine":
                    payload = json.dumps({"id": item_id, "status": await shown(data)}, default=str)
                elif kind == "booking":  # machine time changed (0: every machine); no names
                    payload = json.dumps({"machine_id": item_id})
                elif kind == "notification":  # a new message: its recipient's badge alone
                    if item_id != viewer.id:
                        continue
                    payload = json.dumps({"kind": str(data.get("kind") or "")})
                elif kind == "request":  # a request between shops; staff and its member
                    if not (visibility.sees_all(viewer) or data.get("member_id") == viewer.id):
                        continue
                    payload = json.dumps({"id": str(data["id"])})
                else:
                    if not await own_job(item_id):
                        continue  # another member's job: members see only their own
                    payload = json.dumps({"id": item_id, "event": data}, default=str)
                yield f"event: {kind}\ndata: {payload}\n\n".encode()
        finally:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
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
    try:
        await fleet.sync(machine, machine.id)
    finally:  # it is on record: the grids show it, connected or not
        announce_machine(request, machine, machine.id)
    return service.to_read(machine, fleet.status(machine))


@router.get("/{machine_id:int}", response_model=MachineRead)
async def get_machine(
    machine_id: Id, request: Request, session: SessionDep, user: AnyUser
) -> MachineRead:
    """Return one machine with its live status (members see only their own jobs)."""
    machine = await service.get_or_raise(session=session, machine_id=machine_id)
    statuses = await visibility.visible_statuses(
        session=session, user=user, statuses={machine.id: _fleet(request).status(machine)}
    )
    return service.to_read(machine, statuses[machine.id])


@router.patch("/{machine_id:int}", response_model=MachineRead)
async def update_machine(
    machine_id: Id,
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
    try:
        await fleet.sync(machine, machine.id)
    finally:  # renamed, disabled, another kind: every open grid and machine page hears
        announce_machine(request, machine, machine.id)
    return service.to_read(machine, fleet.status(machine))


@router.delete("/{machine_id:int}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_machine(
    machine_id: Id, request: Request, session: SessionDep, _user: StaffUser
) -> Response:
    """Remove a machine (operators, admins)."""
    machine = await service.get_or_raise(session=session, machine_id=machine_id)
    fleet = _fleet(request)
    running = fleet.running_job(machine_id)
    if running is not None:
        raise ConflictError(f"machine {machine.name!r} is running job {running}; cancel it first")
    await service.delete(session=session, machine=machine)
    await session.commit()
    try:
        await fleet.sync(None, machine_id)
    finally:  # open grids drop its card, its page says it is gone
        announce_machine(request, None, machine_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{machine_id:int}/commands", response_model=CommandResult)
async def send_commands(
    machine_id: Id,
    body: CommandRequest,
    request: Request,
    session: SessionDep,
    _user: StaffUser,
) -> CommandResult:
    """Send raw G-code lines to an idle machine (operators, admins)."""
    machine = await service.get_or_raise(session=session, machine_id=machine_id)
    results = await _fleet(request).send_commands(machine, body.lines)
    return CommandResult(results=results)


@router.post("/{machine_id:int}/emergency-stop", response_model=MachineRead)
async def emergency_stop(
    machine_id: Id, request: Request, session: SessionDep, user: StaffUser
) -> MachineRead:
    """Stop a machine now (M112, GRBL reset); its job fails (operators, admins)."""
    machine = await service.get_or_raise(session=session, machine_id=machine_id)
    fleet = _fleet(request)
    await session.commit()
    await fleet.get(machine).emergency_stop(actor=Actor.person(user.id, user.username))
    return service.to_read(machine, fleet.status(machine))


@router.post("/{machine_id:int}/reset", response_model=ResetResult)
async def reset_machine(
    machine_id: Id, request: Request, session: SessionDep, user: StaffUser
) -> ResetResult:
    """Reset and reconnect a machine after an emergency stop or a firmware halt (operators).

    Marlin: the port is opened again, which resets the board. GRBL: soft reset (Ctrl-X) and
    unlock (`$X`): the position is lost, home the machine. OctoPrint: the printer is
    reconnected. Refused while a job runs.
    """
    machine = await service.get_or_raise(session=session, machine_id=machine_id)
    fleet = _fleet(request)
    service.refuse_while_running(machine, fleet.running_job(machine_id), "a reset")
    await session.commit()  # the reset may take seconds: hold no transaction meanwhile
    result = await fleet.reset(machine, actor=Actor.person(user.id, user.username))
    return ResetResult(message=str(result.get("message") or "reset"), status=fleet.status(machine))


@router.get("/{machine_id:int}/temperatures", response_model=list[TemperatureSample])
async def temperature_history(
    machine_id: Id, request: Request, session: SessionDep, _user: AnyUser
) -> list[TemperatureSample]:
    """Return the last few minutes of a machine's temperatures, oldest first."""
    await service.get_or_raise(session=session, machine_id=machine_id)
    samples = _fleet(request).temperature_history(machine_id)
    return [TemperatureSample.model_validate(s) for s in samples]


async def _control(
    request: Request, session: SessionDep, machine_id: int, action: str, lines_of: Any
) -> CommandResult:
    machine = await service.get_or_raise(session=session, machine_id=machine_id)
    fleet = _fleet(request)
    lines = lines_of(machine)  # first: a mill has no heaters, running or not
    service.refuse_while_running(machine, fleet.running_job(machine_id), action)
    await session.commit()
    results = await fleet.send_commands(machine, lines)
    service.raise_if_refused(machine, results)
    return CommandResult(results=results)


@router.post("/{machine_id:int}/jog", response_model=CommandResult)
async def jog(
    machine_id: Id, body: JogRequest, request: Request, session: SessionDep, _user: StaffUser
) -> CommandResult:
    """Move the tool by a distance (GRBL `$J=`, Marlin G91/G0); refused while a job runs."""
    moves = {"x": body.x, "y": body.y, "z": body.z}
    return await _control(
        request, session, machine_id, "jogging",
        lambda m: service.jog_lines(m, moves, body.feed_mm_min),
    )  # fmt: skip


@router.post("/{machine_id:int}/home", response_model=CommandResult)
async def home(
    machine_id: Id, body: HomeRequest, request: Request, session: SessionDep, _user: StaffUser
) -> CommandResult:
    """Home the machine (G28, GRBL `$H`); refused while a job runs."""
    axes = [a.lower() for a in body.axes]
    return await _control(
        request, session, machine_id, "homing", lambda m: service.home_lines(m, axes)
    )


@router.post("/{machine_id:int}/preheat", response_model=CommandResult)
async def preheat(
    machine_id: Id, body: PreheatRequest, request: Request, session: SessionDep, _user: StaffUser
) -> CommandResult:
    """Set a printer's heaters to a preset (pla, petg, abs, off); refused while a job runs."""
    return await _control(
        request, session, machine_id, "preheating",
        lambda m: service.preheat_lines(m, body.preset),
    )  # fmt: skip


@router.get("/{machine_id:int}/webcam", response_model=WebcamRead)
async def get_webcam(machine_id: Id, session: SessionDep, _user: StaffUser) -> WebcamRead:
    """Show where a machine's webcam is, credentials masked (operators, admins)."""
    machine = await service.get_or_raise(session=session, machine_id=machine_id)
    return WebcamRead.model_validate(webcam.masked(machine.webcam))


@router.put("/{machine_id:int}/webcam", response_model=WebcamRead)
async def put_webcam(
    machine_id: Id, body: WebcamSettings, session: SessionDep, _user: StaffUser
) -> WebcamRead:
    """Set a machine's webcam: an MJPEG `stream_url` and/or a `snapshot_url` (operators).

    The URLs may carry credentials (http://user:pass@cam/...): they stay on the server, and
    logged-in users see the camera through `/machines/{id}/webcam/stream` or `/snapshot`.
    """
    machine = await service.get_or_raise(session=session, machine_id=machine_id)
    await service.set_webcam(
        session=session,
        machine=machine,
        stream_url=str(body.stream_url) if body.stream_url else None,
        snapshot_url=str(body.snapshot_url) if body.snapshot_url else None,
    )
    return WebcamRead.model_validate(webcam.masked(machine.webcam))


@router.delete("/{machine_id:int}/webcam", status_code=status.HTTP_204_NO_CONTENT)
async def delete_webcam(machine_id: Id, session: SessionDep, _user: StaffUser) -> Response:
    """Remove a machine's webcam (operators, admins)."""
    machine = await service.get_or_raise(session=session, machine_id=machine_id)
    await service.set_webcam(session=session, machine=machine, stream_url=None, snapshot_url=None)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
