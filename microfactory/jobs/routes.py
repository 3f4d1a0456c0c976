"""Job endpoints: upload, list, and the actions of a job's life."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile, status

from microfactory.deps import AnyUser, SessionDep, SettingsDep, StaffUser
from microfactory.errors import ConflictError
from microfactory.jobs import service
from microfactory.jobs.files import store_upload
from microfactory.jobs.models import JobState
from microfactory.jobs.schemas import ClearRequest, DispatchRequest, JobRead, PriorityRequest
from microfactory.machines import service as machine_service
from microfactory.machines.fleet import Fleet
from microfactory.machines.models import MachineKind

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


def _fleet(request: Request) -> Fleet:
    fleet: Fleet = request.app.state.fleet
    return fleet


@router.post("", response_model=JobRead, status_code=status.HTTP_201_CREATED)
async def create_job(
    session: SessionDep,
    settings: SettingsDep,
    user: AnyUser,
    file: Annotated[UploadFile, File(description="a G-code file")],
    title: Annotated[str | None, Form(max_length=200)] = None,
    machine_id: Annotated[int | None, Form()] = None,
    machine_kind: Annotated[MachineKind | None, Form()] = None,
) -> JobRead:
    """Submit a G-code file as a job for a machine or a kind of machine."""
    stored = await store_upload(file, settings.upload_dir, settings.max_upload_bytes, ".gcode")
    job = await service.create_from_upload(
        session=session,
        owner=user,
        stored=stored,
        title=title,
        machine_kind=machine_kind,
        machine_id=machine_id,
    )
    return JobRead.model_validate(job)


@router.get("", response_model=list[JobRead])
async def list_jobs(
    session: SessionDep,
    user: AnyUser,
    mine: bool = False,
    state: Annotated[list[JobState] | None, Query()] = None,
) -> list[JobRead]:
    """List jobs, newest first: members see their own, operators everyone's."""
    jobs = await service.list_jobs(session=session, user=user, mine=mine, states=state)
    return [JobRead.model_validate(j) for j in jobs]


@router.get("/{job_id}", response_model=JobRead)
async def get_job(job_id: int, session: SessionDep, user: AnyUser) -> JobRead:
    """Return one job with its state, machine, progress and failure reason."""
    return JobRead.model_validate(
        await service.get_visible(session=session, job_id=job_id, user=user)
    )


@router.post("/{job_id}/approve", response_model=JobRead)
async def approve(job_id: int, session: SessionDep, user: StaffUser) -> JobRead:
    """Approve a submitted job (operators)."""
    job = await service.get_or_raise(session=session, job_id=job_id)
    return JobRead.model_validate(await service.approve(session=session, job=job, by=user))


@router.post("/{job_id}/dispatch", response_model=JobRead)
async def dispatch(
    job_id: int,
    request: Request,
    session: SessionDep,
    _user: StaffUser,
    body: DispatchRequest | None = None,
) -> JobRead:
    """Send an approved job to an idle, compatible machine (operators)."""
    fleet = _fleet(request)
    job = await service.get_or_raise(session=session, job_id=job_id)
    job = await service.dispatch(
        session=session, job=job, fleet=fleet, machine_id=body.machine_id if body else None
    )
    assert job.machine_id is not None
    machine = await machine_service.get_or_raise(session=session, machine_id=job.machine_id)
    await session.commit()  # the assignment is durable before the machine moves
    try:
        await fleet.get(machine).start_job(job.id)
    except ConflictError as exc:
        await service.unassign(session=session, job_id=job.id, reason=exc.detail)
        await session.commit()
        raise
    await session.refresh(job)
    return JobRead.model_validate(job)


async def _control(job_id: int, request: Request, session: SessionDep, action: str) -> JobRead:
    job = await service.get_or_raise(session=session, job_id=job_id)
    wanted = {
        "pause": {JobState.RUNNING},
        "resume": {JobState.PAUSED},
        "cancel": {JobState.RUNNING, JobState.PAUSED, JobState.ASSIGNED},
    }[action]
    service.check_running_state(job, wanted, action)
    assert job.machine_id is not None
    machine = await machine_service.get_or_raise(session=session, machine_id=job.machine_id)
    await session.commit()
    await getattr(_fleet(request).get(machine), action)()
    await session.refresh(job)
    return JobRead.model_validate(job)


@router.post("/{job_id}/pause", response_model=JobRead)
async def pause(job_id: int, request: Request, session: SessionDep, _user: StaffUser) -> JobRead:
    """Pause a running job (operators)."""
    return await _control(job_id, request, session, "pause")


@router.post("/{job_id}/resume", response_model=JobRead)
async def resume(job_id: int, request: Request, session: SessionDep, _user: StaffUser) -> JobRead:
    """Resume a paused job (operators)."""
    return await _control(job_id, request, session, "resume")


@router.post("/{job_id}/cancel", response_model=JobRead)
async def cancel(job_id: int, request: Request, session: SessionDep, user: AnyUser) -> JobRead:
    """Cancel a job: the owner or an operator."""
    job = await service.get_visible(session=session, job_id=job_id, user=user)
    service.check_can_control(job, user)
    if await service.cancel_unstarted(session=session, job=job):
        return JobRead.model_validate(job)
    return await _control(job_id, request, session, "cancel")


@router.post("/{job_id}/clear", response_model=JobRead)
async def clear(job_id: int, body: ClearRequest, session: SessionDep, user: AnyUser) -> JobRead:
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
    return JobRead.model_validate(job)


@router.post("/{job_id}/priority", response_model=JobRead)
async def set_priority(
    job_id: int, body: PriorityRequest, session: SessionDep, _user: StaffUser
) -> JobRead:
    """Set a job's priority (operators)."""
    job = await service.get_or_raise(session=session, job_id=job_id)
    return JobRead.model_validate(
        await service.set_priority(session=session, job=job, priority=body.priority)
    )
