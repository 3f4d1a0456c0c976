"""The fleet: every machine supervisor of this process, and the status they keep.

Requests read status here and never touch a device. Supervisors run in exactly one process
per host (`run_supervisors`); other web workers see machines as offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory.errors import ConflictError
from microfactory.jobs import lifecycle
from microfactory.jobs.models import ACTIVE_STATES, Job, JobState
from microfactory.machines.models import Machine
from microfactory.machines.service import offline_status
from microfactory.runtime.supervisor import Supervisor

log = logging.getLogger("microfactory.fleet")

# Drivers whose machine keeps running a job by itself while we restart.
SELF_HOSTED_DRIVERS = frozenset({"octoprint"})


class StatusHub:
    """Fan-out of live updates to dashboard streams: machine statuses and job transitions.

    Each item is (kind, id, payload): ("machine", machine id, status) or ("job", job id, event).
    """

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[tuple[str, int, dict[str, Any]]]] = set()

    def publish(self, machine_id: int, status: dict[str, Any]) -> None:
        """Deliver a machine's status."""
        self._put(("machine", machine_id, status))

    def publish_job(self, job_id: int, event: dict[str, Any]) -> None:
        """Deliver a job's transition (after its commit)."""
        self._put(("job", job_id, event))

    def _put(self, item: tuple[str, int, dict[str, Any]]) -> None:
        """Deliver an update; a slow subscriber loses its oldest update, never blocks us."""
        for q in self._queues:
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(item)

    async def subscribe(self) -> AsyncIterator[tuple[str, int, dict[str, Any]]]:
        """Yield updates until the caller stops."""
        q: asyncio.Queue[tuple[str, int, dict[str, Any]]] = asyncio.Queue(500)
        self._queues.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._queues.discard(q)


class Fleet:
    """Holds the supervisors of this process."""

    def __init__(self) -> None:
        self.supervisors: dict[int, Supervisor] = {}
        self.hub = StatusHub()
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._upload_dir: Path | None = None
        self.running = False

    # -- reading --------------------------------------------------------------------

    def status(self, machine: Machine) -> dict[str, Any]:
        """Return the live status of a machine, or why it has none."""
        sup = self.supervisors.get(machine.id)
        if sup is None:
            return offline_status(machine)
        status = sup.status_dict()
        if machine.maintenance:
            status = {**status, "maintenance": True}
        return status

    def get(self, machine: Machine) -> Supervisor:
        """Return a machine's supervisor, or refuse with why there is none."""
        sup = self.supervisors.get(machine.id)
        if sup is None:
            reason = offline_status(machine)["message"]
            raise ConflictError(f"machine {machine.name!r} cannot take commands: {reason}")
        return sup

    async def send_commands(self, machine: Machine, lines: list[str]) -> list[dict[str, Any]]:
        """Send raw lines through the machine's supervisor."""
        return await self.get(machine).send_commands(lines)

    # -- lifecycle ------------------------------------------------------------------

    async def start(self, sessionmaker: async_sessionmaker[AsyncSession], upload_dir: Path) -> None:
        """Recover jobs interrupted by a restart, then start a supervisor per machine."""
        self._sessionmaker = sessionmaker
        self._upload_dir = upload_dir
        self.running = True
        async with sessionmaker() as session, session.begin():
            await recover_after_restart(session)
            machines = list((await session.execute(select(Machine))).scalars())
        for machine in machines:
            self._start_supervisor(machine)

    async def stop(self) -> None:
        """Stop every supervisor."""
        self.running = False
        sups = list(self.supervisors.values())
        self.supervisors.clear()
        await asyncio.gather(*(s.stop() for s in sups), return_exceptions=True)

    def _start_supervisor(self, machine: Machine) -> None:
        if not self.running or not machine.enabled or machine.driver == "manual":
            return
        assert self._sessionmaker is not None
        assert self._upload_dir is not None
        sup = Supervisor(
            machine_id=machine.id,
            name=machine.name,
            driver_name=machine.driver,
            connection=machine.connection,
            sessionmaker=self._sessionmaker,
            upload_dir=self._upload_dir,
            on_status=self.hub.publish,
        )
        self.supervisors[machine.id] = sup
        sup.start()

    async def sync(self, machine: Machine | None, machine_id: int) -> None:
        """Restart a machine's supervisor after it was changed or removed (after commit)."""
        old = self.supervisors.get(machine_id)
        if (
            machine is not None
            and old is not None
            and (
                old.driver_name == machine.driver
                and old.connection == machine.connection
                and machine.enabled
            )
        ):
            old.name = machine.name
            return
        if old is not None:
            if old.job_id is not None:
                raise ConflictError(
                    f"machine {old.name!r} is running job {old.job_id}; cancel it first"
                )
            self.supervisors.pop(machine_id, None)
            await old.stop()
        if machine is not None:
            self._start_supervisor(machine)


async def recover_after_restart(session: AsyncSession) -> None:
    """Fail serial jobs that a restart interrupted; OctoPrint jobs are re-attached later.

    A serial machine stops when its host stops streaming, so the job cannot go on. OctoPrint
    keeps printing on its own, so its supervisor re-attaches once connected. The usage of a
    job that had started is recorded by the usage log's subscriber, ending at the restart.
    """
    rows = (
        await session.execute(
            select(Job.id, Job.state, Job.last_acked_line, Machine.driver, Machine.name)
            .join(Machine, Machine.id == Job.machine_id)
            .where(Job.state.in_(list(ACTIVE_STATES)))
        )
    ).all()
    for job_id, state, last_acked, driver, machine_name in rows:
        if driver in SELF_HOSTED_DRIVERS:
            continue
        await lifecycle.end(
            session=session,
            job=job_id,
            state=JobState.FAILED,
            actor=lifecycle.SYSTEM,
            reason="interrupted by a restart of microfactory",
            only_from=ACTIVE_STATES,
            details={
                "lines_sent": last_acked,
                "usage_note": "interrupted by restart; end time is the restart time",
            },
        )
        log.warning("job %s (%s) on %s failed: interrupted by restart", job_id, state, machine_name)
