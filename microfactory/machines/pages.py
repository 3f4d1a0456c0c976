"""The machine page: live temperatures, position, controls, terminal, job and maintenance."""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.deps import SessionDep, ShopTz
from microfactory.machines import service, visibility, webcam
from microfactory.machines.channel import CommandChannel
from microfactory.machines.models import MachineKind
from microfactory.types import Id
from microfactory.web import WebMember, render

router = APIRouter(include_in_schema=False)


class MachineRecords(Protocol):
    """The job and maintenance records the page shows (the runtime provides them: the jobs
    and the bookings import this package, so it cannot import them)."""

    async def job(self, *, session: AsyncSession, job_id: int) -> dict[str, Any] | None:
        """Return the job's title, state and owner id."""

    async def maintenance(
        self, *, session: AsyncSession, machine_id: int, limit: int = 20
    ) -> list[dict[str, Any]]:
        """Return the machine's maintenance blocks, latest first."""


MAINTENANCE_SHOWN = 20  # the latest blocks, past and planned
JOG_STEPS_MM = (0.1, 1.0, 10.0, 50.0)


@router.get("/machines/{machine_id:int}", response_class=HTMLResponse)
async def machine_page(
    request: Request, machine_id: Id, session: SessionDep, user: WebMember, tz: ShopTz
) -> HTMLResponse:
    """Show one machine: graph, status and job for members; controls for operators."""
    fleet: CommandChannel = request.app.state.fleet
    machine = await service.get_or_raise(session=session, machine_id=machine_id)
    statuses = await visibility.visible_statuses(
        session=session, user=user, statuses={machine.id: fleet.status(machine)}
    )
    view = service.to_read(machine, statuses[machine.id])
    records: MachineRecords = request.app.state.machine_records
    job = None
    job_id = view.status.get("job_id")
    if job_id is not None:
        job = await records.job(session=session, job_id=job_id)
    maintenance = await records.maintenance(
        session=session, machine_id=machine.id, limit=MAINTENANCE_SHOWN
    )
    driven = machine.driver != "manual"
    cams = webcam.settings_of(machine.webcam)
    context: dict[str, Any] = {
        "m": view,
        "job": job,
        "maintenance": maintenance,
        "staff": user.is_staff,
        "driven": driven,
        "printer": machine.kind is MachineKind.FDM_PRINTER and driven,
        "grbl": machine.driver in service.GRBL_DRIVERS,
        "presets": service.PREHEAT_PRESETS,
        "jog_steps": JOG_STEPS_MM,
        "history": fleet.temperature_history(machine.id) if driven else [],
        "tz": tz,
        "now": dt.datetime.now(dt.UTC),
        "webcam": {"stream": "stream_url" in cams, "snapshot": "snapshot_url" in cams}
        if cams
        else None,
    }
    return render(request, "machine.html", context)


@router.get("/machines/{machine_id:int}/webcam/stream")
async def webcam_stream(
    request: Request, machine_id: Id, session: SessionDep, _user: WebMember
) -> Response:
    """Relay the machine's MJPEG stream for a few minutes (any logged-in user)."""
    machine = await service.get_or_raise(session=session, machine_id=machine_id)
    url = service.webcam_url(machine, "stream")
    await session.commit()  # the relay lasts minutes: hold no transaction
    kind, body = await webcam.open_stream(url)
    return StreamingResponse(
        body, media_type=kind, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )


@router.get("/machines/{machine_id:int}/webcam/status")
async def webcam_status(
    request: Request, machine_id: Id, session: SessionDep, _user: WebMember
) -> JSONResponse:
    """Say whether the machine's webcam can be shown now (any logged-in user, as the webcam).

    Always 200 for a machine that exists: the page asks before it loads the picture, so that
    a machine without a camera, or with one that is away, shows a placeholder and the browser
    logs no failed load. Answers `{"configured", "available", "kind", "message"}`.
    """
    machine = await service.get_or_raise(session=session, machine_id=machine_id)
    cams = webcam.settings_of(machine.webcam)
    await session.commit()  # the probe may wait seconds on the camera: hold no transaction
    if not cams:
        return JSONResponse(
            {
                "configured": False,
                "available": False,
                "kind": None,
                "message": "This machine has no webcam.",
            },
            headers={"Cache-Control": "no-store"},
        )
    kind = "stream" if "stream_url" in cams else "snapshot"
    why = await webcam.probe(cams[f"{kind}_url"], kind)
    message = "The webcam is on." if why is None else f"The webcam cannot be reached: {why}."
    return JSONResponse(
        {
            "configured": True,
            "available": why is None,
            "kind": kind,
            "message": message,
        },
        headers={"Cache-Control": "no-store"},
    )


@router.get("/machines/{machine_id:int}/webcam/snapshot")
async def webcam_snapshot(
    request: Request, machine_id: Id, session: SessionDep, _user: WebMember
) -> Response:
    """Fetch one picture from the machine's webcam (any logged-in user)."""
    machine = await service.get_or_raise(session=session, machine_id=machine_id)
    url = service.webcam_url(machine, "snapshot")
    await session.commit()
    body, kind = await webcam.snapshot(url)
    return Response(body, media_type=kind, headers={"Cache-Control": "no-store"})
