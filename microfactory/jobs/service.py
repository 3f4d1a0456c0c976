"""Job rules: who may do what to a job, and in which state."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.accounts.models import User
from microfactory.analysis import AnalysisError, analyse_gcode_async
from microfactory.analysis.gcode import MachineLimits
from microfactory.db import utcnow
from microfactory.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from microfactory.files import StoredFile, iter_program
from microfactory.jobs import lifecycle, queue
from microfactory.jobs.estimates import machine_limits
from microfactory.jobs.models import ACTIVE_STATES, ENDED_STATES, Job, JobState
from microfactory.machines import limits
from microfactory.machines import service as machine_service
from microfactory.machines.channel import StatusReader
from microfactory.machines.models import Machine, MachineKind


async def get_or_raise(*, session: AsyncSession, job_id: int) -> Job:
    """Return a job by id or raise NotFoundError."""
    job = await session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"job {job_id} not found")
    return job


async def get_visible(*, session: AsyncSession, job_id: int, user: User) -> Job:
    """Return a job the user may see: their own, or any for staff."""
    job = await get_or_raise(session=session, job_id=job_id)
    if job.owner_id != user.id and not user.is_staff:
        raise NotFoundError(f"job {job_id} not found")
    return job


DEFAULT_PAGE = 100
MAX_PAGE = 500


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of a job list, newest first, and the cursor of the next page (if any)."""

    items: list[Job]
    next_cursor: str | None


def encode_cursor(job_id: int) -> str:
    """Return an opaque cursor that continues a list after this job."""
    return base64.urlsafe_b64encode(f"j{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """Return the job id a cursor continues after; a bad cursor is a 422."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("j") or not raw[1:].isdigit():
            raise ValueError(raw)
        return int(raw[1:])
    except ValueError:
        raise InvalidInputError("the cursor is not one this server gave out") from None


async def list_jobs(
    *,
    session: AsyncSession,
    user: User,
    mine: bool = False,
    states: Iterable[JobState] | None = None,
    limit: int = DEFAULT_PAGE,
    cursor: str | None = None,
) -> JobPage:
    """Return a page of jobs, newest first: members see their own, staff everyone's.

    Keyset paging on the id (`id < cursor`), so a page costs the same however deep it is and
    a job created meanwhile never shifts the pages that follow.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}")
    stmt = select(Job).order_by(Job.id.desc()).limit(limit + 1)
    if mine or not user.is_staff:
        stmt = stmt.where(Job.owner_id == user.id)
    wanted = list(states or [])
    if wanted:
        stmt = stmt.where(Job.state.in_(wanted))
    if cursor:
        stmt = stmt.where(Job.id < decode_cursor(cursor))
    rows = list((await session.execute(stmt)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return JobPage(rows, encode_cursor(rows[-1].id) if more and rows else None)


async def list_open(*, session: AsyncSession) -> list[Job]:
    """Return every job still in the shop's hands (not cleared, not ended off a machine).

    The operator's queue shows all of them, however many: none may vanish off a page.
    """
    stmt = (
        select(Job)
        .where(
            or_(
                Job.state.in_([*lifecycle.UNSTARTED, *ACTIVE_STATES]),
                and_(Job.state.in_(list(ENDED_STATES)), Job.machine_id.is_not(None)),
            )
        )
        .order_by(Job.id.desc())
    )
    return list((await session.execute(stmt)).scalars())


async def analyse_file(
    path: Path, machine: Machine | None = None, limits: MachineLimits | None = None
) -> dict[str, Any]:
    """Analyse a G-code file off the event loop; bad files are a 422."""
    if limits is None:
        limits = machine_limits(machine)
    try:
        result = await analyse_gcode_async(path, machine_limits=limits)
    except AnalysisError as exc:
        raise InvalidInputError(str(exc)) from None
    data = result.as_dict()
    # Thumbnails can be large; keep their sizes, serve the images elsewhere if ever needed.
    data["thumbnails"] = [
        {"width": t["width"], "height": t["height"]} for t in data.get("thumbnails", [])
    ]
    data.pop("slicer_config", None)
    return data


async def create_from_upload(
    *,
    session: AsyncSession,
    owner: User,
    stored: StoredFile,
    title: str | None,
    machine_kind: MachineKind | None,
    machine_id: int | None,
    material: str | None = None,
    required_tags: list[str] | None = None,
    allow_firmware_commands: bool = False,
) -> Job:
    """Create a job from an uploaded G-code file, analysed and validated before it queues."""
    try:
        # One bounded pass over the file: its checks, its line count and its line lengths.
        stats = await asyncio.to_thread(lambda: limits.line_stats(iter_program(stored.path)))
        lines_total = int(stats["count"])
        requested: Machine | None = None
        if machine_id is not None:
            requested = await machine_service.get_or_raise(session=session, machine_id=machine_id)
            if machine_kind is not None and requested.kind != machine_kind:
                raise InvalidInputError(
                    f"machine {requested.name!r} is a {requested.kind.value}, "
                    f"not a {machine_kind.value}"
                )
            machine_kind = requested.kind
        if machine_kind is None:
            raise InvalidInputError("give a machine_id or a machine_kind for the job")
        if allow_firmware_commands and not owner.is_staff:
            raise PermissionDeniedError("only operators may allow firmware-altering commands")
        motion = machine_limits(requested)
        await _end_read_only_transaction(session)
        analysis = await analyse_file(stored.path, limits=motion)
        if requested is not None and motion is not None:
            read_at = (requested.capabilities or {}).get("motion_limits", {}).get("read_at")
            analysis["estimate_for"] = {"machine_id": requested.id, "read_at": read_at}
        # What each firmware accepts is checked now and at assignment, not at dispatch.
        analysis["line_stats"] = stats
        job = Job(
            owner_id=owner.id,
            title=(title or stored.original_name)[:200],
            preparation="ready",
            machine_kind=machine_kind,
            requested_machine_id=requested.id if requested else None,
            file_name=stored.original_name,
            stored_name=stored.stored_name,
            file_sha256=stored.sha256,
            file_size=stored.size,
            lines_total=lines_total,
            progress=fresh_progress(lines_total),
            analysis=analysis,
            material=material,
            required_tags=sorted(set(required_tags or [])),
            allow_firmware_commands=allow_firmware_commands,
            created_at=utcnow(),
        )
        machines = (
            [requested] if requested else await machine_service.list_machines(session=session)
        )
        queue.validate_job(
            analysis=analysis,
            kind=machine_kind,
            machines=machines,
            allow_firmware_commands=allow_firmware_commands,
            job_view=queue.queued_job(job),
        )
    except BaseException:
        stored.path.unlink(missing_ok=True)  # nothing stored half-made
        raise
    return await add_submitted(session=session, job=job, owner=owner)


REPRINTABLE = ENDED_STATES | {JobState.CLEARED}
# Flags a new run of a job does not inherit: where its file was fetched from for a remote
# machine, and the deletion of its file.
_NOT_INHERITED_FLAGS = ("remote_file", "file_deleted_at")


def _copy_of(
    job: Job,
    *,
    owner_id: int,
    allow_firmware_commands: bool,
    notes: str,
    flags: dict[str, Any] | None = None,
    priority: int | None = None,
) -> Job:
    """A new, unstarted job that runs the same file with the same settings and attribution
    (a re-print, or a bad part requeued). The file is shared: retention keeps a file that any
    live job uses."""
    inherited = {k: v for k, v in (job.flags or {}).items() if k not in _NOT_INHERITED_FLAGS}
    extra: dict[str, Any] = {} if priority is None else {"priority": priority}
    return Job(
        owner_id=owner_id,
        title=job.title,
        preparation="ready",
        machine_kind=job.machine_kind,
        requested_machine_id=job.requested_machine_id,
        file_name=job.file_name,
        stored_name=job.stored_name,
        file_sha256=job.file_sha256,
        file_size=job.file_size,
        lines_total=job.lines_total,
        progress=fresh_progress(job.lines_total),
        analysis=dict(job.analysis or {}),
        material=job.material,
        required_tags=list(job.required_tags or []),
        allow_firmware_commands=allow_firmware_commands,
        design_id=job.design_id,
        design_file_id=job.design_file_id,
        parameters=dict(job.parameters or {}),
        copies=job.copies,
        nozzle_diameter_mm=job.nozzle_diameter_mm,
        attribution=dict(job.attribution or {}),
        flags={**inherited, **(flags or {})},
        notes=notes,
        created_at=utcnow(),
        **extra,
    )


async def reprint(*, session: AsyncSession, job: Job, by: User, upload_dir: Path) -> Job:
    """Start a new job from an ended job's G-code: the same file, settings and attribution.

    The new job belongs to the original's owner (it is their part) and goes through approval
    and the queue's checks again, against today's machines. Firmware-altering commands stay
    allowed only when an operator asks for the re-print.
    """
    if job.state not in REPRINTABLE:
        raise ConflictError(
            f"job {job.id} is {job.state.value}: a job can be printed again once it has ended"
        )
    if job.preparation != "ready" or not job.stored_name:
        raise ConflictError(f"job {job.id} has no G-code to print again")
    if (job.flags or {}).get("file_deleted_at") or not (upload_dir / job.stored_name).is_file():
        raise ConflictError(
            f"the file of job {job.id} was deleted after the shop's retention period: "
            "upload it again to print it"
        )
    owner = by if job.owner_id == by.id else await session.get(User, job.owner_id)
    if owner is None:
        raise NotFoundError(f"the owner of job {job.id} no longer exists")
    allow_firmware = job.allow_firmware_commands and by.is_staff
    new = _copy_of(
        job,
        owner_id=owner.id,
        allow_firmware_commands=allow_firmware,
        flags={"reprint_of": job.id},
        notes=f"re-print of job {job.id}",
    )
    requested = (
        await session.get(Machine, job.requested_machine_id) if job.requested_machine_id else None
    )
    machines = [requested] if requested else await machine_service.list_machines(session=session)
    queue.validate_job(
        analysis=new.analysis,
        kind=new.machine_kind,
        machines=machines,
        allow_firmware_commands=allow_firmware,
        job_view=queue.queued_job(new),
    )
    await lifecycle.create(session=session, job=new, actor=lifecycle.by_user(by))
    if owner.trusted or owner.is_staff or by.is_staff:
        new = await lifecycle.approve(session=session, job=new, by=by)
    return new


async def add_submitted(*, session: AsyncSession, job: Job, owner: User) -> Job:
    """Store a new job as submitted; trusted members' and operators' jobs are approved at once."""
    await lifecycle.create(session=session, job=job, actor=lifecycle.by_user(owner))
    if owner.trusted or owner.is_staff:
        job = await lifecycle.approve(session=session, job=job, by=owner)
    return job


async def _end_read_only_transaction(session: AsyncSession) -> None:
    """End a transaction that has only read, so none stays open across a long analysis.

    The request owns its transaction and commits its writes before the upload is stored;
    what is left here are reads (the machine), safe to end early (objects stay loaded).
    """
    if session.in_transaction() and not (session.new or session.dirty or session.deleted):
        await session.commit()


def fresh_progress(lines_total: int) -> dict[str, Any]:
    """Return the progress of a job that has not started."""
    return {"percent": 0.0, "lines_acked": 0, "lines_total": lines_total, "eta_s": None}


async def approve(*, session: AsyncSession, job: Job, by: User) -> Job:
    """Approve a submitted job (operators)."""
    return await lifecycle.approve(session=session, job=job, by=by)


def _refuse_machine(machine: Machine, job: Job, fleet: StatusReader) -> str | None:
    """Return why this machine cannot take this job now, or None."""
    if not machine.enabled:
        return f"machine {machine.name!r} is disabled"
    if machine.maintenance:
        return f"machine {machine.name!r} is under maintenance"
    if machine.driver == "manual":
        return f"machine {machine.name!r} is manual: it cannot be sent G-code"
    if machine.kind != job.machine_kind:
        return (
            f"machine {machine.name!r} is a {machine.kind.value.replace('_', ' ')}, "
            f"and this job needs a {job.machine_kind.value.replace('_', ' ')}"
        )
    problem = limits.program_problem(job.analysis, machine.driver)
    if problem is not None:
        return f"machine {machine.name!r} cannot take this program: {problem}"
    state = fleet.status(machine).get("state")
    if state != "idle":
        message = fleet.status(machine).get("message") or ""
        detail = f" ({message})" if message else ""
        return f"machine {machine.name!r} is {state}{detail}, not idle"
    return None


async def _machine_busy_with_job(session: AsyncSession, machine_id: int) -> Job | None:
    """Return the job holding a machine: running, or ended with its bed not cleared."""
    stmt = select(Job).where(
        Job.machine_id == machine_id, Job.state.in_(list(ACTIVE_STATES | ENDED_STATES))
    )
    return (await session.execute(stmt.limit(1))).scalar_one_or_none()


async def dispatch(
    *,
    session: AsyncSession,
    job: Job,
    fleet: StatusReader,
    machine_id: int | None,
    actor: lifecycle.Actor,
) -> Job:
    """Assign a queued job to an idle, compatible machine (operators).

    The caller commits and then tells the machine's supervisor to start: machine commands
    happen after the commit. Every check that can refuse happens here, before the job moves.
    """
    if job.state is not JobState.QUEUED:
        raise lifecycle.TransitionRefused(
            f"job {job.id} is {job.state.value}; cannot dispatch it: "
            + lifecycle.RULES["assign"].rule,
            rule="assign",
            state=job.state.value,
        )
    target_id = machine_id or job.requested_machine_id
    candidates: list[Machine]
    if target_id is not None:
        candidates = [await machine_service.get_or_raise(session=session, machine_id=target_id)]
    else:
        candidates = [
            m
            for m in await machine_service.list_machines(session=session)
            if m.kind == job.machine_kind
        ]
        if not candidates:
            raise ConflictError(f"no machine of kind {job.machine_kind.value} in this shop")
    reasons = []
    for machine in candidates:
        reason = _refuse_machine(machine, job, fleet)
        if reason is None:
            holder = await _machine_busy_with_job(session, machine.id)
            if holder is not None:
                bed = "; its bed must be cleared" if holder.state in ENDED_STATES else ""
                reason = (
                    f"machine {machine.name!r} is held by job {holder.id} "
                    f"({holder.state.value}{bed})"
                )
        if reason is None:
            return await lifecycle.assign(
                session=session, job=job, machine_id=machine.id, actor=actor
            )
        reasons.append(reason)
    raise ConflictError("cannot dispatch: " + "; ".join(reasons))


def check_can_control(job: Job, user: User) -> None:
    """Refuse members controlling someone else's job."""
    if job.owner_id != user.id and not user.is_staff:
        raise PermissionDeniedError("only operators or the job's owner can do this")


async def cancel_unstarted(*, session: AsyncSession, job: Job, by: User) -> bool:
    """Cancel a job that no machine is running; return False if a machine is running it.

    An assigned job that its machine has not started yet is cancelled here too: cancel
    always works, whatever the machine's state (the supervisor sees the job is gone).
    """
    if job.state in (*lifecycle.UNSTARTED, JobState.ASSIGNED):
        await lifecycle.end(
            session=session,
            job=job,
            state=JobState.CANCELLED,
            actor=lifecycle.by_user(by),
            reason="cancelled",
            only_from=(*lifecycle.UNSTARTED, JobState.ASSIGNED),
        )
        return True
    if job.state in ACTIVE_STATES:
        return False
    raise lifecycle.TransitionRefused(
        f"job {job.id} is {job.state.value}; cannot cancel it: " + lifecycle.RULES["cancel"].rule,
        rule="cancel",
        state=job.state.value,
    )


async def cancel_unreachable(*, session: AsyncSession, job: Job, by: User) -> Job:
    """Cancel a job on a machine that cannot take commands (offline, no supervisor)."""
    return await lifecycle.end(
        session=session,
        job=job,
        state=JobState.CANCELLED,
        actor=lifecycle.by_user(by),
        reason="cancelled while its machine could not be reached: check the machine",
        only_from=ACTIVE_STATES,
    )


def check_running_state(job: Job, wanted: set[JobState], action: str) -> None:
    """Refuse an action that needs the job in one of `wanted` states."""
    if job.state not in wanted or job.machine_id is None:
        names = " or ".join(sorted(s.value for s in wanted))
        raise ConflictError(f"job {job.id} is {job.state.value}; it must be {names} to {action}")


async def clear(
    *, session: AsyncSession, job: Job, by: User, outcome: str, requeue: bool, notes: str
) -> tuple[Job, Job | None]:
    """Confirm the bed is clear after a job ended, with its outcome; maybe requeue it."""
    if requeue and outcome != "bad":
        raise InvalidInputError("only a bad outcome can be requeued")
    job = await lifecycle.clear(session=session, job=job, by=by, outcome=outcome, notes=notes)
    again = None
    if requeue:
        again = _copy_of(
            job,
            owner_id=job.owner_id,
            allow_firmware_commands=job.allow_firmware_commands,
            priority=job.priority,
            notes=f"requeued after job {job.id} came out bad",
        )
        await lifecycle.create(session=session, job=again, actor=lifecycle.by_user(by))
        again = await lifecycle.approve(session=session, job=again, by=by)
    return job, again


async def set_priority(*, session: AsyncSession, job: Job, priority: int) -> Job:
    """Set a job's priority (operators)."""
    if job.state in ENDED_STATES or job.state is JobState.CLEARED:
        raise ConflictError(f"job {job.id} is {job.state.value}; its priority no longer matters")
    job.priority = priority
    await session.flush()
    return job
