"""Jobs made from designs: check the request, then render and slice in a bounded worker.

Creating such a job is quick (the licence, parameters and machine are checked at once);
turning the design into G-code takes seconds to minutes, so it runs after the commit in a
worker with one tool at a time (2 cores: a second PrusaSlicer would only halve both).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory.accounts.models import User
from microfactory.config import Settings
from microfactory.db import utcnow
from microfactory.designs import service as design_service
from microfactory.designs.licences import attribution, licence_flags
from microfactory.designs.models import Design, DesignFile
from microfactory.errors import DomainError, InvalidInputError
from microfactory.fabrication import service as fabrication_service
from microfactory.fabrication.pipeline import prepare_gcode
from microfactory.fabrication.runner import Limits
from microfactory.files import iter_program
from microfactory.jobs import lifecycle, queue
from microfactory.jobs.models import Job, JobState
from microfactory.jobs.service import add_submitted, fresh_progress
from microfactory.machines import limits
from microfactory.machines import service as machine_service
from microfactory.machines.models import Machine, MachineKind

log = logging.getLogger("microfactory.preparation")

SLICED_KINDS = frozenset({"stl", "3mf", "scad"})
MAX_COPIES = 50


async def _slicing_machine(
    session: AsyncSession, kind: MachineKind, machine_id: int | None
) -> Machine:
    """Return the machine whose profile the design is sliced with."""
    if machine_id is not None:
        machine = await machine_service.get_or_raise(session=session, machine_id=machine_id)
        if machine.kind is not kind:
            raise InvalidInputError(f"machine {machine.name!r} is not a {kind.value}")
        return machine
    machines = [
        m
        for m in await machine_service.list_machines(session=session)
        if m.kind is kind and m.enabled and m.driver != "manual"
    ]
    if not machines:
        raise InvalidInputError(f"this shop has no driven {kind.value.replace('_', ' ')}")
    # The most common nozzle wins, so the job can run on as many machines as possible.
    nozzles = [(m.capabilities or {}).get("nozzle_diameter_mm") for m in machines]
    common = max(set(nozzles), key=nozzles.count)
    return next(m for m in machines if (m.capabilities or {}).get("nozzle_diameter_mm") == common)


async def create_from_design(
    *,
    session: AsyncSession,
    owner: User,
    design: Design,
    design_file: DesignFile,
    parameters: dict[str, Any] | None,
    material: str | None,
    copies: int,
    machine_kind: MachineKind | None,
    machine_id: int | None,
    settings: Settings,
    required_tags: list[str] | None = None,
    price: float | None = None,
) -> Job:
    """Create a job from a design and settings; the G-code is made after the commit."""
    if not 1 <= copies <= MAX_COPIES:
        raise InvalidInputError(f"copies must be between 1 and {MAX_COPIES}")
    if design_file.kind == "scad":
        values = await design_service.resolve_parameters(
            settings=settings, design=design, design_file=design_file, parameters=parameters or {}
        )
    elif parameters:
        raise InvalidInputError(f"a {design_file.kind} file has no parameters to change")
    else:
        values = {}
    if design_file.kind in SLICED_KINDS:
        kind = MachineKind.FDM_PRINTER
        if machine_kind not in (None, MachineKind.FDM_PRINTER):
            raise InvalidInputError(
                f"{design_file.kind.upper()} files are sliced for 3D printers, "
                f"not for a {machine_kind.value.replace('_', ' ') if machine_kind else ''}"
            )
        slicer = await _slicing_machine(session, kind, machine_id)
        nozzle = (slicer.capabilities or {}).get("nozzle_diameter_mm")
        material = material or (slicer.capabilities or {}).get("loaded_material")
    elif design_file.kind == "gcode":
        if machine_kind is None and machine_id is None:
            raise InvalidInputError("give a machine_id or a machine_kind for a G-code file")
        if machine_id is not None:
            target = await machine_service.get_or_raise(session=session, machine_id=machine_id)
            kind = target.kind
        else:
            assert machine_kind is not None
            kind = machine_kind
        slicer, nozzle = None, None
        if copies != 1:
            raise InvalidInputError("a G-code file cannot be copied on the bed")
    else:
        raise InvalidInputError(
            f"{design_file.kind.upper()} files need CAM by hand: upload the G-code as a job"
        )
    flags = licence_flags(design.licence)
    job = Job(
        owner_id=owner.id,
        title=f"{design.title}" + (f" ×{copies}" if copies > 1 else ""),
        preparation="pending",
        machine_kind=kind,
        requested_machine_id=machine_id,
        file_name=f"{Path(design_file.name).stem}.gcode",
        stored_name=f"{uuid.uuid4().hex}.gcode",
        file_sha256="",
        file_size=0,
        lines_total=0,
        progress=fresh_progress(0),
        design_id=design.id,
        design_file_id=design_file.id,
        parameters=values,
        material=material,
        copies=copies,
        required_tags=sorted(set(required_tags or [])),
        nozzle_diameter_mm=nozzle,
        attribution=attribution(design),
        flags={"licence_nc": flags["nc"], "nc_with_price": bool(flags["nc"] and price)},
        price=price,
        preparation_log=f"to be sliced with the profile of {slicer.name}" if slicer else None,
        created_at=utcnow(),
    )
    if slicer is not None:
        job.flags = {**job.flags, "sliced_for_machine_id": slicer.id}
    return await add_submitted(session=session, job=job, owner=owner)


class Preparer:
    """Turns pending design jobs into G-code, one tool run at a time."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self._lock = asyncio.Semaphore(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_ready: list[Any] = []  # callbacks (e.g. wake the queue)

    def submit(self, job_id: int) -> asyncio.Task[None]:
        """Prepare a job in the background."""
        task = asyncio.create_task(self.prepare(job_id), name=f"prepare-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def resume_pending(self) -> None:
        """Restart preparations that a restart interrupted."""
        async with self.sessionmaker() as session:
            ids = (
                await session.execute(
                    select(Job.id).where(Job.preparation.in_(["pending", "running"]))
                )
            ).scalars()
            for job_id in list(ids):
                self.submit(job_id)

    async def stop(self) -> None:
        """Cancel running preparations (they resume at the next start)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def prepare(self, job_id: int) -> None:
        """Render and slice a job's design, then queue the job or record why it failed."""
        async with self._lock:
            workdir = self.settings.data_dir / "work" / f"job-{job_id}-{uuid.uuid4().hex[:8]}"
            try:
                await self._prepare(job_id, workdir)
            except DomainError as exc:
                _log_failure(job_id, exc)
                await self._fail(job_id, exc.detail)
            except Exception as exc:  # a tool or bug must fail the job visibly, not hang it
                log.exception("preparing job %s failed", job_id)
                await self._fail(job_id, f"internal error while preparing: {exc}")
            finally:
                await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def _prepare(self, job_id: int, workdir: Path) -> None:
        async with self.sessionmaker() as session, session.begin():
            job = await session.get(Job, job_id)
            if job is None or job.preparation not in ("pending", "running"):
                return
            job.preparation = "running"
            lifecycle.announce_preparation(session=session, job=job)
            design = await design_service.get_or_raise(
                session=session, design_id=job.design_id or 0
            )
            design_file = design_service.get_file_or_raise(design, job.design_file_id or 0)
            source = design_service.file_path(self.settings, design_file)
            support = {
                f.name: design_service.file_path(self.settings, f)
                for f in design.files
                if f.id != design_file.id and f.kind in ("scad", "stl", "dxf", "svg")
            }
            profile = None
            sliced_for = (job.flags or {}).get("sliced_for_machine_id")
            if sliced_for:
                machine = await machine_service.get_or_raise(session=session, machine_id=sliced_for)
                profile = await fabrication_service.profile_text_for(
                    session=session, machine=machine, material=job.material
                )
            params, kind, copies = dict(job.parameters or {}), design_file.kind, job.copies
        prepared = await prepare_gcode(
            design_file_path=source,
            kind=kind,
            parameters=params,
            profile_text=profile,
            copies=copies,
            workdir=workdir,
            limits=Limits(max_output_bytes=self.settings.max_upload_bytes),
            support_files=support,
        )
        target = self.settings.upload_dir / f"{uuid.uuid4().hex}.gcode"
        await asyncio.to_thread(shutil.move, prepared.path, target)
        try:
            digest, size = await asyncio.to_thread(_digest, target)
            stats = await asyncio.to_thread(lambda: limits.line_stats(iter_program(target)))
            lines_total = int(stats["count"])
            async with self.sessionmaker() as session, session.begin():
                job = await session.get(Job, job_id)
                if job is None:
                    raise InvalidInputError("the job disappeared while it was prepared")
                machines = list((await session.execute(select(Machine))).scalars())
                job.analysis = {**prepared.analysis, "line_stats": stats}
                queue.validate_job(
                    analysis=job.analysis,
                    kind=job.machine_kind,
                    machines=[m for m in machines if m.id == job.requested_machine_id] or machines,
                    allow_firmware_commands=job.allow_firmware_commands,
                    job_view=queue.queued_job(job),
                )
                job.stored_name = target.name
                job.file_sha256 = digest
                job.file_size = size
                job.lines_total = lines_total
                job.progress = fresh_progress(lines_total)
                job.preparation = "ready"
                job.preparation_log = prepared.log[-4000:]
                lifecycle.announce_preparation(session=session, job=job)
                if job.state is JobState.APPROVED:
                    await lifecycle.queue(
                        session=session, job=job, actor=lifecycle.SYSTEM, reason="G-code ready"
                    )
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        log.info("job %s prepared: %s lines", job_id, lines_total)
        for callback in self.on_ready:
            callback()

    async def _fail(self, job_id: int, message: str) -> None:
        async with self.sessionmaker() as session, session.begin():
            job = await session.get(Job, job_id)
            if job is None:
                return
            job.preparation = "failed"
            job.preparation_log = message[-4000:]
            lifecycle.announce_preparation(session=session, job=job)
            if job.state in lifecycle.UNSTARTED:
                await lifecycle.end(
                    session=session,
                    job=job,
                    state=JobState.FAILED,
                    actor=lifecycle.SYSTEM,
                    reason=f"could not make G-code from the design: {message}",
                    only_from=lifecycle.UNSTARTED,
                )


def _log_failure(job_id: int, exc: DomainError) -> None:
    """Log why a job could not be prepared, with the tool's last output lines."""
    tool_log = str(exc.extra.get("log") or "")
    tail = "\n".join(tool_log.strip().splitlines()[-12:])
    log.warning(
        "preparing job %s failed (%s): %s%s",
        job_id,
        exc.extra.get("tool") or "check",
        exc.detail,
        f"\n{tail}" if tail else "",
    )


def _digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
