"""Machine supervisors: one asyncio task per driven machine.

A supervisor is the only thing that talks to its machine's driver. It connects and
reconnects with backoff, keeps the status snapshot that the API and dashboard read, runs
jobs, and moves job state through the job lifecycle in transactions of its own. Usage and
booking check-in are not its business: they subscribe to the lifecycle's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from drivers import (
    Driver,
    DriverError,
    Event,
    EventKind,
    MachineBusy,
    MachineState,
    Program,
    ProgramRefused,
    Status,
    create_driver,
)
from drivers.planner import limits_from_dict
from microfactory.db import utcnow
from microfactory.errors import ConflictError
from microfactory.jobs import lifecycle, media
from microfactory.jobs.estimates import estimate_for_machine, live_eta_s
from microfactory.jobs.models import ACTIVE_STATES, Job, JobState
from microfactory.machines.models import Machine

log = logging.getLogger("microfactory.supervisor")

BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
CONNECT_TIMEOUT_S = 60.0
RESET_TIMEOUT_S = 60.0  # a reset reconnects: the connect timeout bounds it
PROGRESS_WRITE_INTERVAL_S = 2.0  # at most one progress write per machine per interval
# Commands an operator may send while a job runs: they report or stop, never move.
SAFE_WHILE_RUNNING = frozenset({"M105", "M114", "M115", "M112", "M108", "?", "!", "~"})
# Drivers whose firmware takes M104/M140: heaters are switched off when they reconnect with
# no job to resume (a crashed server left them at print temperature).
HEATED_SERIAL_DRIVERS = frozenset({"marlin", "sim-marlin"})
GRBL_DRIVERS = frozenset({"grbl", "sim-grbl"})
# Marlin echoes `Unknown command: "<cmd>"`; a quoted text that is no G/M/T word is the cut
# tail of a line (the driver's resend logic accounts for it), not a command it refused.
_UNKNOWN_COMMAND_RE = re.compile(r'^echo:\s*Unknown command:\s*"\s*([GMTgmt]\d[^"]*)"')
MAX_FLAGGED_LINES = 50  # "flag" keeps at most this many refused lines on a job
# A job's state must reach the database even across a database restart: its transitions are
# retried at these intervals (the last repeats) for up to DB_RETRY_FOR_S, then given up with
# an error logged (the job is then failed by the next start's recovery, never dropped).
DB_RETRY_S = (0.5, 1.0, 2.0, 5.0)
DB_RETRY_FOR_S = 600.0


def _database_unavailable(exc: BaseException) -> bool:
    """Whether an error means the database cannot be reached now (a restart, a network cut)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated)
    return isinstance(exc, ConnectionError)


class Supervisor:
    """Owns one machine: its driver, its status snapshot and the job it runs."""

    def __init__(
        self,
        *,
        machine_id: int,
        name: str,
        driver_name: str,
        connection: dict[str, Any],
        sessionmaker: async_sessionmaker[AsyncSession],
        upload_dir: Path,
        on_status: Callable[[int, dict[str, Any]], None],
        unknown_command_policy: str = "fail",
    ) -> None:
        self.machine_id = machine_id
        self.name = name
        self.driver_name = driver_name
        self.connection = dict(connection)
        self.unknown_command_policy = unknown_command_policy
        if driver_name in GRBL_DRIVERS and "stop_on_error" not in self.connection:
            # GRBL's driver stops a job at its first `error:N` itself, naming the line; the
            # shop-wide policy decides unless the machine's connection says otherwise.
            self.connection["stop_on_error"] = unknown_command_policy == "fail"
        self._background: set[asyncio.Task[Any]] = set()
        self.sessionmaker = sessionmaker
        self.upload_dir = upload_dir
        self._on_status = on_status
        self.driver: Driver | None = None
        self.job_id: int | None = None
        self._last_progress_write = 0.0
        self._status = Status(state=MachineState.CONNECTING, message="starting")
        self._task: asyncio.Task[None] | None = None
        self._estimate_task: asyncio.Task[float | None] | None = None
        self._command_lock = asyncio.Lock()
        self._job_lock = asyncio.Lock()
        self.connected = asyncio.Event()
        # While an operator's emergency stop is under way: why the job fails, and who.
        self._estop: tuple[str, lifecycle.Actor | None] | None = None

    # -- status ---------------------------------------------------------------------

    def status_dict(self) -> dict[str, Any]:
        """Return the live status the API and the dashboard show."""
        data = self._status.as_dict()
        data["job_id"] = self.job_id
        return data

    def _publish(self, status: Status) -> None:
        self._status = status
        self._on_status(self.machine_id, self.status_dict())

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start the connect-and-watch loop."""
        self._task = asyncio.create_task(self._run(), name=f"supervisor-{self.machine_id}")

    async def stop(self) -> None:
        """Stop watching and close the driver."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.driver is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.driver.close(), 10)
            self.driver = None

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                driver = create_driver(self.driver_name, self.connection)
            except Exception as exc:  # a broken driver must not kill the supervisor silently
                log.exception("machine %s: cannot create driver %s", self.name, self.driver_name)
                self._publish(Status(state=MachineState.ERROR, message=f"driver failed: {exc}"))
                await asyncio.sleep(BACKOFF_S[-1])
                continue
            self._publish(Status(state=MachineState.CONNECTING, message="connecting"))
            try:
                await asyncio.wait_for(driver.connect(), CONNECT_TIMEOUT_S)
            except (DriverError, TimeoutError, OSError) as exc:
                with contextlib.suppress(Exception):
                    await driver.close()
                delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                attempt += 1
                reason = str(exc) or type(exc).__name__
                log.warning(
                    "machine %s: cannot connect: %s (retry in %ss)", self.name, reason, delay
                )
                self._publish(
                    Status(state=MachineState.OFFLINE, message=f"{reason}; retrying in {delay:g} s")
                )
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self.driver = driver
            events = driver.events()
            try:
                self._publish(await driver.status())
                self.connected.set()
                await self._store_motion_limits(driver)
                await self._after_connect(driver)
                async for event in events:
                    await self._handle(event)
                    if event.kind is EventKind.DISCONNECTED:
                        break
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await events.aclose()  # type: ignore[attr-defined]
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(driver.close(), 10)
                self.driver = None
            self._publish(Status(state=MachineState.OFFLINE, message="link lost; reconnecting"))
            await asyncio.sleep(BACKOFF_S[0])

    async def _store_motion_limits(self, driver: Driver) -> None:
        """Keep the limits the machine reported at connect (`$$`, M503, a printer profile) on
        the machine as capabilities["motion_limits"], with when and where they were read,
        unless an operator has set them (source "operator")."""
        limits = getattr(driver, "motion_limits", None)
        if not isinstance(limits, dict) or not limits:
            return
        try:
            limits_from_dict(limits)  # what is stored must read back (the API validates it)
        except (TypeError, ValueError) as exc:
            log.warning("machine %s: ignoring its motion limits: %s", self.name, exc)
            return
        try:
            async with self.sessionmaker() as session, session.begin():
                machine = await session.get(Machine, self.machine_id)
                if machine is None:
                    return
                caps = dict(machine.capabilities or {})
                current = caps.get("motion_limits") or {}
                if current.get("source") == "operator":
                    log.info("machine %s: keeping the operator's motion limits", self.name)
                    return
                caps["motion_limits"] = dict(limits)
                machine.capabilities = caps
        except Exception:  # the limits are a refinement: never let them stop the machine
            log.exception("machine %s: could not store its motion limits", self.name)
            return
        log.info("machine %s: motion limits read (%s)", self.name, limits.get("source"))

    async def _after_connect(self, driver: Driver) -> None:
        """Re-attach to a job the machine kept running while we were away (OctoPrint); a
        serial printer with no job to resume gets its heaters switched off."""
        attach = getattr(driver, "attach", None)
        async with self.sessionmaker() as session:
            job = (
                await session.execute(
                    select(Job).where(
                        Job.machine_id == self.machine_id, Job.state.in_(list(ACTIVE_STATES))
                    )
                )
            ).scalar_one_or_none()
        if job is None or attach is None:
            # Serial jobs were failed at startup (or when the link was lost): nothing can
            # resume, so a crash must not leave a hot nozzle and bed behind.
            await self._heaters_off(driver)
            return
        remote_file = (job.flags or {}).get("remote_file")
        progress = await attach(remote_file, lines_total=job.lines_total)
        if progress is None:
            await self._end_job(
                JobState.FAILED,
                reason="the machine is no longer printing this job after a restart of "
                "microfactory; check the bed before clearing it",
                job_id=job.id,
            )
            return
        self.job_id = job.id
        log.info("machine %s: re-attached to job %s", self.name, job.id)

    async def _heaters_off(self, driver: Driver) -> None:
        if self.driver_name not in HEATED_SERIAL_DRIVERS:
            return
        for command in ("M104 S0", "M140 S0"):
            try:
                await asyncio.wait_for(driver.send(command), 30)
            except (DriverError, TimeoutError) as exc:
                log.warning("machine %s: could not send %s at connect: %s", self.name, command, exc)
                return
        log.info("machine %s: heaters switched off at connect (no job to resume)", self.name)

    # -- events ---------------------------------------------------------------------

    async def _handle(self, event: Event) -> None:
        kind = event.kind
        if kind is EventKind.STATUS:
            status = event.data["status"]
            assert isinstance(status, Status)
            self._publish(status)
            await self._maybe_write_progress(status)
        elif kind is EventKind.PAUSED:
            await self._set_job_state(JobState.PAUSED)
        elif kind is EventKind.RESUMED:
            await self._set_job_state(JobState.RUNNING)
        elif kind is EventKind.FINISHED:
            await self._end_job(JobState.FINISHED)
        elif kind in (EventKind.CANCELLED, EventKind.FAILED) and self._estop is not None:
            # The driver's own report of the stop (GRBL, Marlin, OctoPrint: "emergency
            # stop"), perhaps before emergency_stop() returns: the job fails, naming who.
            reason, actor = self._estop
            await self._end_job(JobState.FAILED, reason=reason, actor=actor)
        elif kind is EventKind.CANCELLED:
            await self._end_job(JobState.CANCELLED, reason=event.data.get("reason") or "cancelled")
        elif kind is EventKind.FAILED:
            await self._end_job(JobState.FAILED, reason=str(event.data.get("reason") or "failed"))
        elif kind is EventKind.DISCONNECTED:
            reason = str(event.data.get("reason") or "the link was lost")
            await self._end_job(JobState.FAILED, reason=f"machine disconnected: {reason}")
        elif kind is EventKind.LOG:
            log.info("machine %s: %s", self.name, event.data.get("line", ""))
            await self._check_refused_line(event.data)
        elif kind is EventKind.ACTION:
            log.info("machine %s: firmware action %s", self.name, event.data.get("action"))

    async def _check_refused_line(self, data: Mapping[str, Any]) -> None:
        """Apply the unknown-command policy to a line the firmware refused mid-job.

        Marlin answers a command it does not know with `echo:Unknown command:` and an ok, and
        runs on: the policy "fail" stops the job (heaters off, as a cancel does) and fails it
        naming the line; "flag" records the line on the job. GRBL's `error:N` reaches here only
        under "flag" (under "fail" its driver has already failed the job).
        """
        job_id = self.job_id
        if job_id is None:
            return
        text = str(data.get("line") or "")
        number = data.get("line_number")
        program_line = str(data.get("program_line") or "")
        match = _UNKNOWN_COMMAND_RE.match(text)
        if match is not None:
            reply = f'Unknown command: "{match.group(1)}"'
            program_line = program_line or match.group(1)
        elif text.startswith("error:") and number is not None:
            meaning = data.get("meaning")
            reply = f"{text} ({meaning})" if meaning else text
        else:
            return
        where = f"line {number}" if number is not None else "a line"
        summary = f"{where} `{program_line}`: the firmware answered {reply}"
        if self.unknown_command_policy == "fail":
            driver = self.driver
            await self._end_job(
                JobState.FAILED,
                reason=f"{summary}; the job was stopped (unknown_command_policy is fail)",
                job_id=job_id,
            )
            if driver is not None:
                task = asyncio.create_task(self._stop_after_refusal(driver))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            return
        log.warning("machine %s: job %s: %s", self.name, job_id, summary)
        entry = {"line_number": number, "line": program_line, "reply": reply}
        async with self.sessionmaker() as session, session.begin():
            job = await session.get(Job, job_id)
            if job is None:
                return
            flags = dict(job.flags or {})
            refused = list(flags.get("firmware_rejected") or [])
            if len(refused) < MAX_FLAGGED_LINES:
                refused.append(entry)
            flags["firmware_rejected"] = refused
            job.flags = flags

    async def _stop_after_refusal(self, driver: Driver) -> None:
        with contextlib.suppress(DriverError, TimeoutError):
            await asyncio.wait_for(driver.cancel(), 60)

    async def _maybe_write_progress(self, status: Status) -> None:
        if self.job_id is None or status.progress is None:
            return
        now = time.monotonic()
        if now - self._last_progress_write < PROGRESS_WRITE_INTERVAL_S:
            return
        self._last_progress_write = now
        try:
            await self._write_progress(status)
        except Exception as exc:
            if not _database_unavailable(exc):
                raise
            # Progress is superseded by the next write: skip this one, the job streams on.
            log.warning(
                "machine %s: progress not written (database unavailable): %s", self.name, exc
            )

    async def _write_progress(self, status: Status) -> None:
        progress = status.progress
        assert progress is not None
        # Progress is not state: a conditional write that only touches a job still on the
        # machine, so it can never resurrect a job that ended meanwhile.
        values = progress.as_dict()
        async with self.sessionmaker() as session, session.begin():
            if progress.eta_s_hint is None:  # the peer does not know better: blend the plan
                row = (
                    await session.execute(
                        select(Job.analysis, Job.lines_total).where(Job.id == self.job_id)
                    )
                ).first()
                if row is not None:
                    elapsed = time.time() - progress.started_at if progress.started_at else None
                    eta = live_eta_s(row[0] or {}, progress.lines_acked, row[1], elapsed)
                    if eta is not None:
                        values["eta_s"] = eta
            await session.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.state.in_(list(ACTIVE_STATES)))
                .values(
                    progress=values,
                    last_acked_line=progress.lines_acked,
                    last_line_text=(progress.last_line or "")[:500] or None,
                )
                .execution_options(synchronize_session=False)
            )

    async def _retrying(self, what: str, write: Callable[[], Awaitable[None]]) -> None:
        """Run a database write, retrying while the database is unreachable (a restart)."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                await write()
                if attempt:
                    log.info("machine %s: %s written after %s retries", self.name, what, attempt)
                return
            except Exception as exc:
                if not _database_unavailable(exc):
                    raise
                if time.monotonic() - started > DB_RETRY_FOR_S:
                    log.error("machine %s: gave up writing %s: %s", self.name, what, exc)
                    raise
                delay = DB_RETRY_S[min(attempt, len(DB_RETRY_S) - 1)]
                attempt += 1
                log.warning(
                    "machine %s: database unavailable while writing %s (retry in %ss): %s",
                    self.name, what, delay, exc,
                )  # fmt: skip
                await asyncio.sleep(delay)

    async def _set_job_state(self, state: JobState, actor: lifecycle.Actor | None = None) -> None:
        """Record a pause or resume the machine reported (idempotent: a repeat is ignored)."""
        if self.job_id is None:
            return
        move = lifecycle.pause if state is JobState.PAUSED else lifecycle.resume
        job_id = self.job_id

        async def write() -> None:
            async with self.sessionmaker() as session, session.begin():
                with contextlib.suppress(lifecycle.TransitionRefused):
                    await move(session=session, job=job_id, actor=actor or lifecycle.MACHINE)

        await self._retrying(f"job {job_id} {state.value}", write)

    async def _end_job(
        self,
        state: JobState,
        reason: str | None = None,
        job_id: int | None = None,
        actor: lifecycle.Actor | None = None,
    ) -> None:
        """Record how a job ended; the machine stays held until its bed is cleared.

        Usage is recorded by the usage log's subscriber once this commits.
        """
        async with self._job_lock:
            job_id = job_id or self.job_id
            if job_id is None:
                return
            progress = self._status.progress
            details = {"lines_sent": progress.lines_sent} if progress is not None else {}
            ended = job_id

            async def write() -> None:
                async with self.sessionmaker() as session, session.begin():
                    await lifecycle.end(
                        session=session,
                        job=ended,
                        state=state,
                        actor=actor or lifecycle.MACHINE,
                        reason=reason,
                        progress=progress.as_dict() if progress is not None else None,
                        details=details,
                        only_from=ACTIVE_STATES,
                    )

            try:
                await self._retrying(f"job {job_id} {state.value}", write)
            except lifecycle.TransitionRefused as exc:
                log.info("machine %s: job %s already ended: %s", self.name, job_id, exc.detail)
            else:
                log.info(
                    "machine %s: job %s %s%s",
                    self.name,
                    job_id,
                    state.value,
                    f": {reason}" if reason else "",
                )
            if self.job_id == job_id:
                self.job_id = None

    # -- commands -------------------------------------------------------------------

    def _require_driver(self) -> Driver:
        if self.driver is None or not self.connected.is_set():
            raise ConflictError(
                f"machine {self.name!r} is {self._status.state.value}: {self._status.message}"
            )
        return self.driver

    async def start_job(self, job_id: int, actor: lifecycle.Actor | None = None) -> None:
        """Start a job assigned to this machine.

        A refused start leaves the job as it was before it was assigned (back in the queue,
        no usage); a job that can never run here (its stored file is gone) fails with why.
        """
        async with self._job_lock:
            async with self.sessionmaker() as session:
                job = await session.get(Job, job_id)
                if job is None or job.state is not JobState.ASSIGNED:
                    state = job.state.value if job is not None else "gone"
                    raise ConflictError(f"job {job_id} is {state}, not assigned to a machine")
                if job.machine_id != self.machine_id:
                    raise ConflictError(f"job {job_id} is assigned to another machine")
                path = self.upload_dir / job.stored_name
                title = job.title
            try:
                driver = self._require_driver()
                if self.job_id is not None:
                    raise ConflictError(
                        f"machine {self.name!r} is already running job {self.job_id}"
                    )
                try:
                    program = await asyncio.to_thread(Program.from_file, path, title)
                except (OSError, UnicodeDecodeError) as exc:
                    missing = isinstance(exc, FileNotFoundError)
                    reason = (
                        f"the job's G-code file is missing from storage ({path.name})"
                        if missing
                        else f"the job's G-code file cannot be read: {exc}"
                    )
                    await self._fail_unstarted(job_id, reason)
                    raise ConflictError(f"job {job_id} cannot start: {reason}") from None
                started = utcnow()
                try:
                    await driver.start(program)
                except ProgramRefused as exc:
                    # The host will not take this file: it fails here, nothing was printed.
                    reason = f"the machine refused the program, nothing was printed: {exc}"
                    await self._fail_unstarted(job_id, reason)
                    raise ConflictError(f"job {job_id} cannot start: {reason}") from exc
                except DriverError as exc:
                    raise ConflictError(f"machine {self.name!r} refused the job: {exc}") from exc
            except ConflictError as exc:
                await self._unassign(job_id, f"start refused: {exc.detail}")
                raise
            self.job_id = job_id
            self._last_progress_write = 0.0
            try:
                async with self.sessionmaker() as session, session.begin():
                    await lifecycle.start(
                        session=session, job=job_id, at=started, actor=actor or lifecycle.MACHINE
                    )
            except lifecycle.TransitionRefused as exc:
                # Cancelled while we were starting it: the database is the truth, stop the
                # machine again.
                log.warning("machine %s: job %s: %s; stopping", self.name, job_id, exc.detail)
                self.job_id = None
                with contextlib.suppress(DriverError):
                    await driver.cancel()
                raise
        # Re-plan the job with this machine's own limits, off the critical path.
        self._estimate_task = asyncio.create_task(
            estimate_for_machine(self.sessionmaker, self.upload_dir, job_id, self.machine_id)
        )
        remote_file = getattr(driver, "job_file", None)
        if remote_file:
            # OctoPrint keeps printing across our restarts: remember its file to re-attach.
            async with self.sessionmaker() as session, session.begin():
                job = await session.get(Job, job_id)
                if job is not None:
                    job.flags = {**(job.flags or {}), "remote_file": remote_file}
            if hasattr(driver, "file_metadata"):
                task = asyncio.create_task(self._import_file_metadata(driver, job_id, remote_file))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _import_file_metadata(self, driver: Driver, job_id: int, remote_file: str) -> None:
        """Add what the printer host read from the job's file (Moonraker's metadata: the
        slicer's estimate, filament, thumbnails) to the job's analysis. A refinement: a
        failure is logged, never the job's."""
        estimate = self._estimate_task
        if estimate is not None:  # it rewrites the analysis too: one writer at a time
            with contextlib.suppress(Exception):
                await asyncio.shield(estimate)
        try:
            metadata = await driver.file_metadata(remote_file)  # type: ignore[attr-defined]
            if not metadata:
                return
            async with self.sessionmaker() as session:
                job = await session.get(Job, job_id)
                if job is None or not job.stored_name:
                    return
                stored_name, has_png = job.stored_name, bool((job.analysis or {}).get("thumbnails"))
            kept = None
            best = media.largest_png(metadata.get("thumbnails") or [])
            if best is not None and not has_png:
                png = await driver.thumbnail(best["relative_path"])  # type: ignore[attr-defined]
                target = media.printer_thumbnail_path(self.upload_dir, stored_name)
                await asyncio.to_thread(target.write_bytes, png)
                kept = best
            async with self.sessionmaker() as session, session.begin():
                job = await session.get(Job, job_id)
                if job is not None:
                    job.analysis = media.apply_printer_metadata(job.analysis or {}, metadata, kept)
        except (DriverError, OSError) as exc:
            log.warning(
                "machine %s: job %s: no file metadata from the host: %s", self.name, job_id, exc
            )
            return
        except Exception:
            log.exception(
                "machine %s: job %s: could not store the file metadata", self.name, job_id
            )
            return
        log.info(
            "machine %s: job %s: file metadata from the host (slicer: %s s, %s thumbnails)",
            self.name,
            job_id,
            metadata.get("estimated_time_s"),
            len(metadata.get("thumbnails") or []),
        )

    async def _unassign(self, job_id: int, reason: str) -> None:
        async with self.sessionmaker() as session, session.begin():
            with contextlib.suppress(lifecycle.TransitionRefused):
                await lifecycle.unassign(session=session, job=job_id, reason=reason)

    async def _fail_unstarted(self, job_id: int, reason: str) -> None:
        async with self.sessionmaker() as session, session.begin():
            with contextlib.suppress(lifecycle.TransitionRefused):
                await lifecycle.end(
                    session=session,
                    job=job_id,
                    state=JobState.FAILED,
                    reason=reason,
                    only_from={JobState.ASSIGNED},
                )

    async def _control(self, action: str) -> None:
        driver = self._require_driver()
        try:
            await getattr(driver, action)()
        except DriverError as exc:
            raise ConflictError(
                f"machine {self.name!r} could not {action.replace('_', ' ')}: {exc}"
            ) from exc

    async def pause(self, actor: lifecycle.Actor | None = None) -> None:
        """Pause the running job."""
        await self._control("pause")
        # Record it now so the caller sees the new state; the driver's event is idempotent.
        await self._set_job_state(JobState.PAUSED, actor)

    async def resume(self, actor: lifecycle.Actor | None = None) -> None:
        """Resume the paused job."""
        await self._control("resume")
        await self._set_job_state(JobState.RUNNING, actor)

    async def cancel(self, actor: lifecycle.Actor | None = None) -> None:
        """Cancel the running job safely."""
        await self._control("cancel")
        await self._end_job(JobState.CANCELLED, reason="cancelled", actor=actor)

    async def emergency_stop(self, actor: lifecycle.Actor | None = None) -> None:
        """Stop the machine now; the running job fails ("emergency stop by <username>")."""
        who = actor.name if actor is not None and actor.name else "an operator"
        reason = f"emergency stop by {who}"
        self._estop = (reason, actor)
        try:
            await self._control("emergency_stop")
            if self.job_id is not None:
                await self._end_job(JobState.FAILED, reason=reason, actor=actor)
        finally:
            self._estop = None

    async def reset(self, actor: lifecycle.Actor | None = None) -> dict[str, Any]:
        """Recover the machine after an emergency stop or a firmware halt, and reconnect it.

        The driver resets its firmware its own way (Marlin: a reconnect, which resets the
        board; GRBL: Ctrl-X and `$X`; OctoPrint: it reconnects the printer). A machine that is
        offline is connected now rather than after its backoff. Refused while a job runs.
        """
        if self.job_id is not None:
            raise ConflictError(
                f"machine {self.name!r} is running job {self.job_id}: cancel the job (or use "
                "the emergency stop) before a reset"
            )
        who = actor.name if actor is not None and actor.name else "an operator"
        log.warning("machine %s: reset and reconnect asked by %s", self.name, who)
        driver = self.driver
        if driver is None:
            await self._relink()
            return {"message": "reconnected", "status": self.status_dict()}
        async with self._command_lock:
            try:
                note = await asyncio.wait_for(driver.reset(), RESET_TIMEOUT_S)
            except MachineBusy as exc:
                raise ConflictError(f"machine {self.name!r} is busy: {exc}") from exc
            except (DriverError, TimeoutError, OSError) as exc:
                reason = str(exc) or "it did not answer in time"
                log.warning("machine %s: reset failed: %s; reconnecting", self.name, reason)
                # The driver may be half closed: start the link over, as after a lost link.
                await self._relink(wait=False)
                raise ConflictError(
                    f"machine {self.name!r} could not be reset: {reason}; it is reconnecting, "
                    "check its cable and power"
                ) from exc
        self._publish(await driver.status())
        log.info("machine %s: reset: %s", self.name, note)
        return {"message": note, "status": self.status_dict()}

    async def _relink(self, *, wait: bool = True) -> None:
        """Drop the link and connect again at once (the loop's `finally` closes the driver)."""
        old = self._task
        if old is not None:
            old.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await old
        self.start()
        if not wait:
            return
        try:
            await asyncio.wait_for(self.connected.wait(), RESET_TIMEOUT_S)
        except TimeoutError:
            raise ConflictError(
                f"machine {self.name!r} did not reconnect: {self._status.message}"
            ) from None

    async def send_commands(self, lines: list[str]) -> list[dict[str, Any]]:
        """Send raw lines; while a job runs only safe real-time commands pass."""
        driver = self._require_driver()
        if self.job_id is not None:
            unsafe = [
                ln for ln in lines if ln.strip().split(" ")[0].upper() not in SAFE_WHILE_RUNNING
            ]
            if unsafe:
                raise ConflictError(
                    f"machine {self.name!r} is running job {self.job_id}: only "
                    f"{', '.join(sorted(SAFE_WHILE_RUNNING))} may be sent now, not {unsafe[0]!r}"
                )
        results = []
        async with self._command_lock:
            for line in lines:
                try:
                    reply = await driver.send(line.strip())
                except MachineBusy as exc:
                    raise ConflictError(f"machine {self.name!r} is busy: {exc}") from exc
                except DriverError as exc:
                    results.append({"line": line, "ok": False, "reply": [], "error": str(exc)})
                    continue
                results.append({"line": line, "ok": True, "reply": reply})
        return results
