"""The queue runner: runs the shop-wide matcher and starts what it assigned.

The rules (validation, matching, assignment) are in jobs/queue.py and jobs/matcher.py; this
loop lives in the runtime because it tells supervisors to start jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory.config import Settings
from microfactory.errors import ConflictError
from microfactory.jobs import lifecycle
from microfactory.jobs import queue as job_queue
from microfactory.runtime.fleet import Fleet

log = logging.getLogger("microfactory.queue")


class QueueRunner:
    """Runs the matcher every few seconds, and at once when woken (a job queued, a bed cleared)."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], fleet: Fleet, settings: Settings
    ) -> None:
        self.sessionmaker = sessionmaker
        self.fleet = fleet
        self.settings = settings
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the loop."""
        self._task = asyncio.create_task(self._run(), name="queue-runner")

    async def stop(self) -> None:
        """Stop the loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake(self) -> None:
        """Run the matcher soon."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.queue_interval_s)
            self._wake.clear()
            try:
                await self.run_once()
            except Exception:  # the loop must survive one bad pass; the next one retries
                log.exception("queue pass failed")

    async def run_once(self) -> list[tuple[int, int]]:
        """Assign what can be assigned and start it."""
        async with self.sessionmaker() as session:
            pairs = await job_queue.plan(session=session, fleet=self.fleet, settings=self.settings)
            await session.commit()
        for job_id, machine_id in pairs:
            sup = self.fleet.supervisors.get(machine_id)
            if sup is None:
                async with self.sessionmaker() as session, session.begin():
                    with contextlib.suppress(lifecycle.TransitionRefused):
                        await lifecycle.unassign(
                            session=session,
                            job=job_id,
                            reason="start refused: the machine has no supervisor",
                            actor=lifecycle.SYSTEM,
                        )
                continue
            # A refused start is handled by the supervisor: the job goes back to the queue
            # as it was, or fails when it cannot run at all (its file is gone).
            with contextlib.suppress(ConflictError):
                await sup.start_job(job_id)
        return pairs
