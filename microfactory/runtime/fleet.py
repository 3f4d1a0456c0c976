"""The fleet: every machine supervisor of this process, and the status they keep.

Requests read status here and never touch a device. Supervisors run in exactly one process
per host (`run_supervisors`); other web workers see machines as offline.

The fleet sits in the runtime, above the domains: it uses the job lifecycle and the machine
registry; no domain imports it (they see `machines.channel.CommandChannel`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from drivers.base import EventHub
from microfactory.errors import ConflictError
from microfactory.jobs import lifecycle
from microfactory.jobs.models import ACTIVE_STATES, Job, JobState
from microfactory.machines.models import Machine
from microfactory.machines.service import offline_status
from microfactory.runtime.history import TemperatureHistory
from microfactory.runtime.supervisor import Supervisor

log = logging.getLogger("microfactory.fleet")

# Drivers whose machine keeps running a job by itself while we restart.
SELF_HOSTED_DRIVERS = frozenset({"octoprint", "moonraker"})
SELF_HOSTED_DRIVERS |= {"prusalink"}  # PrusaLink prints on without us, too


#: a live update: ("machine", machine id, status), ("job", job id, transition),
#: ("booking", machine id, {}), ("request", 0, {"id": request id, "member_id": …}) or
#: ("notification", user id, {"kind": …}): a new message for that person
Update = tuple[str, int, dict[str, Any]]


class Fleet:
    """Holds the supervisors of this process: the in-process command channel.

    It implements `microfactory.machines.channel.CommandChannel`, which is all that routes
    and services see of it.
    """

    def __init__(self) -> None:
        self.supervisors: dict[int, Supervisor] = {}
        # Slow dashboard streams lose their oldest update rather than block a supervisor.
        self.hub: EventHub[Update] = EventHub(maxsize=500)
        self.history = TemperatureHistory()
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._upload_dir: Path | None = None
        self._unknown_command_policy = "fail"
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

    def running_job(self, machine_id: int) -> int | None:
        """Return the job a machine is running, if any."""
        sup = self.supervisors.get(machine_id)
        return sup.job_id if sup is not None else None

    def snapshots(self) -> dict[int, dict[str, Any]]:
        """Return every supervised machine's status, by id."""
        return {mid: sup.status_dict() for mid, sup in list(self.supervisors.items())}

    def subscribe(self) -> AsyncIterator[Update]:
        """Yield live updates until the caller stops."""
        return self.hub.subscribe()

    def temperature_history(self, machine_id: int) -> list[dict[str, Any]]:
        """Return the last few minutes of a machine's temperatures, oldest first."""
        return self.history.samples(machine_id)

    def publish_status(self, machine_id: int, status: dict[str, Any]) -> None:
        """Deliver a machine's status to the streams (and keep its temperatures)."""
        self.history.record(machine_id, status)
        self.hub.publish(("machine", machine_id, status))

    def publish_job(self, job_id: int, event: dict[str, Any]) -> None:
        """Deliver a job's transition to the streams (after its commit)."""
        self.hub.publish(("job", job_id, event))

    def publish_booking(self, machine_id: int) -> None:
        """Tell the streams a machine's booked time changed (0: every machine's)."""
        self.hub.publish(("booking", machine_id, {}))

    def publish_request(self, request_id: str, member_id: int | None) -> None:
        """Tell the streams a fabrication request changed (after its commit).

        The member it was sent for (None at the making shop) only filters who is told.
        """
        self.hub.publish(("request", 0, {"id": request_id, "member_id": member_id}))

    def publish_message(self, user_id: int, kind: str) -> None:
        """Tell the streams a person has a new message (after its commit): their badge."""
        self.hub.publish(("notification", user_id, {"kind": kind}))

    async def send_commands(self, machine: Machine, lines: list[str]) -> list[dict[str, Any]]:
        """Send raw lines through the machine's supervisor."""
        return await self.get(machine).send_commands(lines)

    async def reset(self, machine: Machine, actor: lifecycle.Actor | None = None) -> dict[str, Any]:
        """Reset and reconnect a machine after an emergency stop or a firmware halt."""
        return await self.get(machine).reset(actor=actor)

    # -- lifecycle ------------------------------------------------------------------

    async def start(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        upload_dir: Path,
        *,
        unknown_command_policy: str = "fail",
    ) -> None:
        """Recover jobs interrupted by a restart, then start a supervisor per machine."""
        self._sessionmaker = sessionmaker
        self._upload_dir = upload_dir
        self._unknown_command_policy = unknown_command_policy
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
            on_status=self.publish_status,
            unknown_command_policy=self._unknown_command_policy,
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
        if machine is None:
            self.history.forget(machine_id)
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
