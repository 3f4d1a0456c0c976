"""In-process events published after a transaction commits, and their subscribers.

The job lifecycle (jobs/lifecycle.py) is the only publisher of job events; usage recording,
booking check-in, notifications and the live stream subscribe, the way Moonraker's
`history.py` subscribes to `job_state:state_changed`. Events are delivered in order by one
worker task, after the commit that made them true, so a subscriber never sees a change that
was rolled back and a slow subscriber never holds a request's transaction open.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger("microfactory.events")

#: key of the bus in a session's `info`; the app's sessionmaker puts it there
BUS_KEY = "event_bus"
_PENDING_KEY = "pending_events"


@dataclass(frozen=True, slots=True)
class JobChanged:
    """A job moved from one state to another (published after the commit)."""

    topic: str  # "job.started", "job.ended", ...
    job_id: int
    owner_id: int
    machine_id: int | None
    from_state: str | None
    to_state: str
    at: dt.datetime
    actor: str  # "user", "machine" or "system"
    actor_id: int | None = None
    reason: str | None = None
    event_id: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # The job as the transition left it, so that subscribers need not import the jobs domain.
    title: str = ""
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    paused_s: float = 0.0
    lines_total: int = 0
    last_acked_line: int | None = None
    filament_g: float | None = None  # the analysis' estimate for the whole program


Handler = Callable[[JobChanged], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change: a person, a machine (its supervisor) or the system."""

    kind: str  # "user", "machine", "system"
    user_id: int | None = None
    name: str | None = field(default=None, compare=False)

    @classmethod
    def person(cls, user_id: int, username: str | None = None) -> Actor:
        """Return the actor for a person."""
        return cls("user", user_id, username)


MACHINE = Actor("machine")
SYSTEM = Actor("system")


class EventBus:
    """Deliver events to subscribers in publication order, one at a time."""

    def __init__(self) -> None:
        self._subscribers: list[tuple[str, Handler]] = []
        self._queue: asyncio.Queue[JobChanged] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Call `handler` for every event of `topic` ("job.ended"), or of a prefix ("job.*")."""
        self._subscribers.append((topic, handler))

    def publish(self, item: JobChanged) -> None:
        """Queue an event for delivery (call it after the commit)."""
        self._queue.put_nowait(item)

    def start(self) -> None:
        """Start delivering."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event-bus")

    async def drain(self) -> None:
        """Wait until every event published so far was delivered."""
        if self._task is None:
            while not self._queue.empty():
                await self._deliver(self._queue.get_nowait())
                self._queue.task_done()
            return
        await self._queue.join()

    async def stop(self) -> None:
        """Deliver what is queued, then stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain(), 30)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._deliver(item)
            finally:
                self._queue.task_done()

    async def _deliver(self, item: JobChanged) -> None:
        for topic, handler in list(self._subscribers):
            if not _matches(topic, item.topic):
                continue
            try:
                await handler(item)
            except Exception:  # one failing subscriber must not starve the others
                log.exception(
                    "subscriber %s failed on %s of job %s", handler, item.topic, item.job_id
                )


def _matches(pattern: str, topic: str) -> bool:
    if pattern.endswith(".*"):
        return topic.startswith(pattern[:-1])
    return pattern == topic


def publish_after_commit(session: Any, item: JobChanged) -> None:
    """Publish `item` once the session's transaction commits; drop it on rollback."""
    info = session.info
    info.setdefault(_PENDING_KEY, []).append(item)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    pending = session.info.pop(_PENDING_KEY, None)
    if not pending:
        return
    bus: EventBus | None = session.info.get(BUS_KEY)
    if bus is None:
        return  # a session outside the app (CLI, migrations): nobody listens
    for item in pending:
        bus.publish(item)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING_KEY, None)
