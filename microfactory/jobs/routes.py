"""Job endpoints: upload, list, and the actions of a job's life."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile as StarletteUploadFile

from microfactory import retention
from microfactory.accounts.models import User
from microfactory.deps import AnyUser, SessionDep, SettingsDep, StaffUser
from microfactory.designs import service as design_service
from microfactory.errors import ConflictError, InvalidInputError, NotFoundError
from microfactory.files import store_upload
from microfactory.jobs import lifecycle, media, preparation, service
from microfactory.jobs.models import Job, JobState
from microfactory.jobs.schemas import (
    ClearRequest,
    DesignJobCreate,
    DispatchRequest,
    JobEventRead,
    JobRead,
    PriorityRequest,
)
from microfactory.machines import service as machine_service
from microfactory.machines.channel import CommandChannel
from microfactory.machines.models import MachineKind
from microfactory.types import Id

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


class UploadJobForm(BaseModel):
    """The form fields that come with a G-code upload."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, max_length=200)
    machine_id: Id | None = None
    machine_kind: MachineKind | None = None
    material: str | None = Field(None, max_length=64)
    required_tags: list[str] = Field(default_factory=list, max_length=20)
    allow_firmware_commands: bool = False


def _fleet(request: Request) -> CommandChannel:
    channel: CommandChannel = request.app.state.fleet
    return channel


def _wake_queue(request: Request) -> None:
    runner = getattr(request.app.state, "queue_runner", None)
    if runner is not None:
        runner.wake()


_CREATE_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "title": {"type": "string"},
                        "machine_id": {"type": "integer"},
                        "machine_kind": {"type": "string", "enum": [k.value for k in MachineKind]},
                        "material": {"type": "string"},
                        "required_tags": {"type": "array", "items": {"type": "string"}},
                        "allow_firmware_commands": {"type": "boolean"},
                    },
                }
            },
            "application/json": {"schema": DesignJobCreate.model_json_schema()},
        },
    }
}


@router.post(
    "", response_model=JobRead, status_code=status.HTTP_201_CREATED, openapi_extra=_CREATE_DOC
)
async def create_job(
    request: Request, session: SessionDep, settings: SettingsDep, user: AnyUser
) -> JobRead:
    """Submit a job: a G-code upload (multipart), or a design plus settings (JSON).

    An upload is analysed and validated (process, build volume, temperatures, firmware
    commands) before it is accepted. A design job is checked (licence, parameters, machine)
    and its G-code is made after the commit; trusted members and operators skip approval.
    """
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            body = DesignJobCreate.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        job = await _create_from_design(session, settings, user, body)
        await session.commit()
        request.app.state.preparer.submit(job.id)
        return JobRead.model_validate(job)
    if not content_type.startswith("multipart/form-data"):
        raise InvalidInputError(
            "send a G-code file as multipart/form-data, or a design job as application/json"
        )
    form = await request.form(max_files=1, max_fields=50)
    upload = form.get("file")
    if not isinstance(upload, StarletteUploadFile):
        raise InvalidInputError("the form needs a 'file' field holding the G-code")
    try:
        fields = UploadJobForm.model_validate(
            {
                "title": form.get("title") or None,
                "machine_id": form.get("machine_id") or None,
                "machine_kind": form.get("machine_kind") or None,
                "material": form.get("material") or None,
                "required_tags": [t for t in form.getlist("required_tags") if isinstance(t, str)],
                "allow_firmware_commands": form.get("allow_firmware_commands") or False,
            }
        )
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    # No transaction stays open across the file's I/O and analysis (a token's last use is
    # written at authentication): commit what the request did so far.
    await session.commit()
    stored = await store_upload(upload, settings.upload_dir, settings.max_upload_bytes, ".gcode")
    await retention.check_quota_or_discard(
        session=session, settings=settings, user=user, stored=[(stored.path, stored.size)]
    )
    job = await service.create_from_upload(
        session=session,
        owner=user,
        stored=stored,
        title=fields.title,
        machine_kind=fields.machine_kind,
        machine_id=fields.machine_id,
        material=fields.material,
        required_tags=fields.required_tags,
        allow_firmware_commands=fields.allow_firmware_commands,
    )
    await session.commit()
    _wake_queue(request)
    return JobRead.model_validate(job)


async def _create_from_design(
    session: SessionDep, settings: SettingsDep, user: AnyUser, body: DesignJobCreate
) -> Job:
    design = await design_service.get_visible_or_raise(
        session=session, design_id=body.design_id, user=user
    )
    if body.file_id is not None:
        design_file = design_service.get_file_or_raise(design, body.file_id)
    else:
        printable = [f for f in design.files if f.kind in ("scad", "stl", "3mf", "gcode")]
        if len(printable) != 1:
            names = ", ".join(f"{f.id}: {f.name}" for f in printable) or "none"
            raise InvalidInputError(f"choose the design file to make (file_id): {names}")
        design_file = printable[0]
    job = await preparation.create_from_design(
        session=session,
        owner=user,
        design=design,
        design_file=design_file,
        parameters=body.parameters,
        material=body.material,
        copies=body.copies,
        machine_kind=body.machine_kind,
        machine_id=body.machine_id,
        settings=settings,
        required_tags=body.required_tags,
        price=body.price,
    )
    if body.title:
        job.title = body.title
    return job


@router.get("", response_model=list[JobRead])
async def list_jobs(
    request: Request,
    response: Response,
    session: SessionDep,
    user: AnyUser,
    mine: bool = False,
    state: Annotated[list[JobState] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = service.DEFAULT_PAGE,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> list[JobRead]:
    """List jobs, newest first: members see their own, operators everyone's.

    Paged by cursor: when there is more, the `Link` header (rel="next") and `X-Next-Cursor`
    give the next page (`?cursor=`), with the same filters and `limit`.
    """
    page = await service.list_jobs(
        session=session, user=user, mine=mine, states=state, limit=limit, cursor=cursor
    )
    if page.next_cursor is not None:
        url = request.url.include_query_params(cursor=page.next_cursor, limit=limit)
        response.headers["Link"] = f'<{url}>; rel="next"'
        response.headers["X-Next-Cursor"] = page.next_cursor
    return [JobRead.model_validate(j) for j in page.items]


@router.get("/{job_id:int}", response_model=JobRead)
async def get_job(job_id: Id, session: SessionDep, user: AnyUser) -> JobRead:
    """Return one job with its state, machine, progress and failure reason."""
    return JobRead.model_validate(
        await service.get_visible(session=session, job_id=job_id, user=user)
    )


_IMMUTABLE = "private, max-age=86400"  # a job's file never changes (its SHA-256 is the ETag)


@router.get(
    "/{job_id:int}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: {"description": "no thumbnail"}},
)
async def job_thumbnail(
    job_id: Id, request: Request, session: SessionDep, user: AnyUser, settings: SettingsDep
) -> Response:
    """Return the preview image the slicer embedded in the job's G-code (its owner, operators);
    a printer host's PNG of it (Moonraker's, from a QOI thumbnail) when the file has none."""
    job = await service.get_visible(session=session, job_id=job_id, user=user)
    etag = f'"{job.file_sha256}-thumbnail"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": _IMMUTABLE})
    path = media.file_of(job, settings.upload_dir)
    png = await asyncio.to_thread(media.read_thumbnail, path)
    if png is None:
        raise NotFoundError(f"job {job_id} has no thumbnail (the slicer embedded none)")
    return Response(
        png,
        media_type="image/png",
        headers={"ETag": etag, "Cache-Control": _IMMUTABLE, "X-Content-Type-Options": "nosniff"},
    )


@router.get(
    "/{job_id:int}/gcode",
    response_class=FileResponse,
    responses={200: {"content": {"text/x-gcode": {}}}},
)
async def job_gcode(
    job_id: Id, session: SessionDep, user: AnyUser, settings: SettingsDep
) -> FileResponse:
    """Return the job's G-code, for its preview or a download (its owner, operators)."""
    job = await service.get_visible(session=session, job_id=job_id, user=user)
    path = media.file_of(job, settings.upload_dir)
    return FileResponse(
        path,
        media_type="text/x-gcode",
        filename=job.file_name or f"job-{job.id}.gcode",
        content_disposition_type="inline",
        headers={"Cache-Control": _IMMUTABLE, "X-Content-Type-Options": "nosniff"},
    )


@router.post("/{job_id:int}/approve", response_model=JobRead)
async def approve(job_id: Id, request: Request, session: SessionDep, user: StaffUser) -> JobRead:
    """Approve a submitted job (operators); it joins the queue."""
    job = await service.get_or_raise(session=session, job_id=job_id)
    job = await service.approve(session=session, job=job, by=user)
    await session.commit()
    _wake_queue(request)
    return JobRead.model_validate(job)


@router.get("/{job_id:int}/events", response_model=list[JobEventRead])
async def job_events(job_id: Id, session: SessionDep, user: AnyUser) -> list[JobEventRead]:
    """Return a job's state transitions, oldest first: members see only their own jobs'."""
    await service.get_visible(session=session, job_id=job_id, user=user)
    return [
        JobEventRead.model_validate(e)
        for e in await lifecycle.events_of(session=session, job_id=job_id)
    ]


@router.post("/{job_id:int}/dispatch", response_model=JobRead)
async def dispatch(
    job_id: Id,
    request: Request,
    session: SessionDep,
    user: StaffUser,
    body: DispatchRequest | None = None,
) -> JobRead:
    """Send a queued job to an idle, compatible machine (operators).

    The assignment commits first; then the machine's supervisor starts the job. When the
    machine refuses, the supervisor has already put the job back as it was (or failed it,
    when its file is gone); this route never writes its own copy of the job back.
    """
    fleet = _fleet(request)
    job = await service.get_or_raise(session=session, job_id=job_id)
    job = await service.dispatch(
        session=session,
        job=job,
        fleet=fleet,
        machine_id=body.machine_id if body else None,
        actor=lifecycle.by_user(user),
    )
    assert job.machine_id is not None
    machine = await machine_service.get_or_raise(session=session, machine_id=job.machine_id)
    supervisor = fleet.get(machine)  # refuses before the commit if there is none
    await session.commit()  # the assignment is durable before the machine moves
    await supervisor.start_job(job.id, actor=lifecycle.by_user(user))
    await session.refresh(job)
    return JobRead.model_validate(job)


async def _control(
    job_id: Id, request: Request, session: SessionDep, action: str, user: User
) -> JobRead:
    job = await service.get_or_raise(session=session, job_id=job_id)
    wanted = {
        "pause": {JobState.RUNNING},
        "resume": {JobState.PAUSED},
        "cancel": {JobState.RUNNING, JobState.PAUSED},
    }[action]
    service.check_running_state(job, wanted, action)
    assert job.machine_id is not None
    machine = await machine_service.get_or_raise(session=session, machine_id=job.machine_id)
    await session.commit()
    actor = lifecycle.by_user(user)
    channel = _fleet(request)
    try:
        handle = channel.get(machine)
    except ConflictError:
        if action != "cancel":
            raise
        handle = None
    if action == "cancel" and (handle is None or channel.running_job(machine.id) != job.id):
        # Cancel always works: no supervisor is running this job (the machine is offline or
        # was never re-attached), so there is nothing to stop but the record.
        await service.cancel_unreachable(session=session, job=job, by=user)
        await session.commit()
    else:
        assert handle is not None
        await getattr(handle, action)(actor=actor)
    await session.refresh(job)
    return JobRead.model_validate(job)


@router.post("/{job_id:int}/pause", response_model=JobRead)
async def pause(job_id: Id, request: Request, session: SessionDep, user: StaffUser) -> JobRead:
    """Pause a running job (operators)."""
    return await _control(job_id, request, session, "pause", user)


@router.post("/{job_id:int}/resume", response_model=JobRead)
async def resume(job_id: Id, request: Request, session: SessionDep, user: StaffUser) -> JobRead:
    """Resume a paused job (operators)."""
    return await _control(job_id, request, session, "resume", user)


@router.post("/{job_id:int}/cancel", response_model=JobRead)
async def cancel(job_id: Id, request: Request, session: SessionDep, user: AnyUser) -> JobRead:
    """Cancel a job: the owner or an operator."""
    job = await service.get_visible(session=session, job_id=job_id, user=user)
    service.check_can_control(job, user)
    if await service.cancel_unstarted(session=session, job=job, by=user):
        await session.refresh(job)
        return JobRead.model_validate(job)
    return await _control(job_id, request, session, "cancel", user)


@router.post("/{job_id:int}/clear", response_model=JobRead)
async def clear(
    job_id: Id, body: ClearRequest, request: Request, session: SessionDep, user: AnyUser
) -> JobRead:
    """Confirm the bed is clear after a job, with its outcome: the owner or an operator."""
    job = await service.get_visible(session=session, job_id=job_id, user=user)
    service.check_can_control(job, user)
    job, _again = await service.clear(
        session=session,
        job=job,
        by=user,
        outcome=body.outcome,
        requeue=body.requeue,
        notes=body.notes,
    )
    await session.commit()
    _wake_queue(request)  # the machine is free again
    return JobRead.model_validate(job)


@router.post("/{job_id:int}/reprint", response_model=JobRead, status_code=status.HTTP_201_CREATED)
async def reprint(
    job_id: Id, request: Request, session: SessionDep, settings: SettingsDep, user: AnyUser
) -> JobRead:
    """Print an ended job again, as a new job with the same file: the owner or an operator."""
    job = await service.get_visible(session=session, job_id=job_id, user=user)
    service.check_can_control(job, user)
    new = await service.reprint(session=session, job=job, by=user, upload_dir=settings.upload_dir)
    await session.commit()
    _wake_queue(request)
    return JobRead.model_validate(new)


@router.post("/{job_id:int}/priority", response_model=JobRead)
async def set_priority(
    job_id: Id, body: PriorityRequest, session: SessionDep, _user: StaffUser
) -> JobRead:
    """Set a job's priority (operators)."""
    job = await service.get_or_raise(session=session, job_id=job_id)
    return JobRead.model_validate(
        await service.set_priority(session=session, job=job, priority=body.priority)
    )
