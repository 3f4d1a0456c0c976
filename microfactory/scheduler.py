"""Scheduled tasks, run once across every process by a database lease.

APScheduler ticks in each process that runs supervisors; at each tick the process tries to
take the `scheduler` lease row (holder + expiry, taken with one atomic UPDATE or INSERT). Only
the holder runs the tasks; it renews the lease every tick, and another process takes over
once a holder has been silent past the expiry. The tasks keep no state of their own: each
reads what is due from the database, so nothing is lost across restarts. See
docs/scheduling.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import or_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory.bookings import scheduled as booking_tasks
from microfactory.config import Settings
from microfactory.db import utcnow
from microfactory.leases import SchedulerLease
from microfactory.notifications import service as notification_service
from microfactory.usage import scheduled as usage_tasks

log = logging.getLogger(__name__)

LEASE_NAME = "scheduler"
TICK_S = 30.0
LEASE_TTL = dt.timedelta(seconds=3 * TICK_S)  # three missed ticks before another takes over


def new_holder_id() -> str:
    """Return a name for this process, unique across hosts and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def take_lease(
    *,
    session: AsyncSession,
    holder: str,
    now: dt.datetime,
    ttl: dt.timedelta = LEASE_TTL,
    name: str = LEASE_NAME,
) -> bool:
    """Take or renew a lease atomically; return whether `holder` now holds it."""
    expires = now + ttl
    dialect = session.get_bind().dialect.name
    values = {"name": name, "holder": holder, "expires_at": expires, "acquired_at": now}
    # A single conditional statement each: the database decides, never a read-then-write.
    insert = (pg_insert if dialect == "postgresql" else sqlite_insert)(SchedulerLease)
    created = await session.execute(
        insert.values(**values).on_conflict_do_nothing(index_elements=[SchedulerLease.name])
    )
    if created.rowcount == 1:  # type: ignore[attr-defined]
        return True
    renewed = await session.execute(
        update(SchedulerLease)
        .where(
            SchedulerLease.name == name,
            or_(SchedulerLease.holder == holder, SchedulerLease.expires_at <= now),
        )
        .values(holder=holder, expires_at=expires)
        .execution_options(synchronize_session=False)
    )
    return renewed.rowcount == 1  # type: ignore[attr-defined]


async def release_lease(
    *, session: AsyncSession, holder: str, now: dt.datetime, name: str = LEASE_NAME
) -> None:
    """Give up a lease this holder has, so another process can take over at once."""
    await session.execute(
        update(SchedulerLease)
        .where(SchedulerLease.name == name, SchedulerLease.holder == holder)
        .values(expires_at=now)
        .execution_options(synchronize_session=False)
    )


Task = Callable[[AsyncSession, dt.datetime, Settings], Awaitable[object]]
#: a task that opens its own transactions (it does slow I/O between them)
AloneTask = Callable[[async_sessionmaker[AsyncSession], dt.datetime, Settings], Awaitable[object]]


@dataclass(frozen=True)
class NamedTask:
    """A scheduled task: a name for the logs and a function of (session, now, settings)."""

    name: str
    run: Task | None = None
    run_alone: AloneTask | None = None


def default_tasks(settings: Settings | None = None) -> list[NamedTask]:
    """Return the shop's periodic tasks, in the order they run each tick."""
    from microfactory import retention  # imported here: retention imports jobs

    def tz(settings: Settings) -> ZoneInfo:
        return ZoneInfo(settings.shop_timezone)

    async def no_shows(s: AsyncSession, now: dt.datetime, st: Settings) -> object:
        return await booking_tasks.release_no_shows(session=s, now=now, tz=tz(st))

    async def reminders(s: AsyncSession, now: dt.datetime, st: Settings) -> object:
        return await booking_tasks.send_reminders(session=s, now=now, tz=tz(st))

    async def sessions(s: AsyncSession, now: dt.datetime, st: Settings) -> object:
        return await usage_tasks.log_booked_sessions(session=s, now=now)

    async def email(
        sessions: async_sessionmaker[AsyncSession], now: dt.datetime, st: Settings
    ) -> object:
        # Its own short transactions, one per message: no SMTP call inside a transaction.
        return await notification_service.deliver_pending(
            sessionmaker=sessions, settings=st, now=now
        )

    async def job_files(s: AsyncSession, now: dt.datetime, st: Settings) -> object:
        return await retention.purge_job_files(session=s, settings=st, now=now)

    from microfactory.network.hub import mirror, prune  # the network: hub side

    tasks = [
        NamedTask("release_no_shows", no_shows),
        NamedTask("log_booked_sessions", sessions),
        NamedTask("send_reminders", reminders),
        NamedTask("deliver_email", run_alone=email),
        NamedTask("purge_job_files", job_files),
    ]
    if settings is not None and settings.hub and settings.hub_upstreams:
        # A hub mirroring others: HTTP between its transactions, so it opens its own.
        tasks.append(NamedTask("pull_hub_upstreams", run_alone=mirror.pull_upstreams))
    if settings is not None and settings.hub:
        tasks.append(NamedTask("prune_hub_reports", prune.scheduled_prune))
    return tasks


async def run_tick(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    holder: str,
    now: dt.datetime | None = None,
    tasks: list[NamedTask] | None = None,
) -> list[str] | None:
    """Run every task once if this holder gets the lease; return the names run, or None."""
    now = now or utcnow()
    async with sessionmaker() as session, session.begin():
        if not await take_lease(session=session, holder=holder, now=now):
            return None
    ran = []
    for task in tasks if tasks is not None else default_tasks(settings):
        # One transaction per task: a failing task neither blocks nor undoes the others.
        try:
            if task.run_alone is not None:
                await task.run_alone(sessionmaker, now, settings)
            else:
                assert task.run is not None
                async with sessionmaker() as session, session.begin():
                    await task.run(session, now, settings)
            ran.append(task.name)
        except Exception:  # a scheduled task must not kill the scheduler; it retries next tick
            log.exception("scheduled task %s failed", task.name)
    return ran


class Scheduler:
    """APScheduler ticking `run_tick` in this process; the lease decides who really runs."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        tick_s: float = TICK_S,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.holder = new_holder_id()
        self.tick_s = tick_s
        self._scheduler: AsyncIOScheduler | None = None

    async def tick(self) -> None:
        """Run one tick (APScheduler calls this)."""
        try:
            await run_tick(
                sessionmaker=self.sessionmaker, settings=self.settings, holder=self.holder
            )
        except Exception:  # the database may be briefly away; the next tick retries
            log.exception("scheduler tick failed")

    def start(self) -> None:
        """Start ticking now and every tick_s seconds."""
        self._scheduler = AsyncIOScheduler(timezone=dt.UTC)
        self._scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.tick_s,
            next_run_time=dt.datetime.now(dt.UTC),  # catch up at once after a restart
            id="microfactory-tick",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=int(self.tick_s),
        )
        if self.settings.network_hubs:
            # Imported here: the network job takes its own lease with take_lease above.
            from microfactory.network import scheduled as network_tasks

            network_tasks.install(self._scheduler, self.sessionmaker, self.settings, self.holder)
        # Signed messages to other shops (fabrication requests) still to deliver, with backoff;
        # the public designs' list for the hubs.
        from microfactory.network.requests import outbox as request_outbox

        request_outbox.install(self._scheduler, self.sessionmaker, self.holder, self.settings)
        self._scheduler.start()
        log.info("scheduler started as %s", self.holder)

    async def stop(self) -> None:
        """Stop ticking and hand the lease over."""
        if self._scheduler is not None:
            # shutdown() cancels the jobs still running but cannot wait for them (it is not a
            # coroutine): wait here, so that none is mid-transaction when the engine closes.
            running = [
                f
                for executor in self._scheduler._executors.values()
                for f in getattr(executor, "_pending_futures", ())
            ]
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
            if running:
                await asyncio.wait(running, timeout=10)
        try:
            async with self.sessionmaker() as session, session.begin():
                await release_lease(session=session, holder=self.holder, now=utcnow())
        except Exception:  # shutting down: the lease expires by itself anyway
            log.warning("could not release the scheduler lease", exc_info=True)


__all__ = ["NamedTask", "Scheduler", "SchedulerLease", "run_tick", "take_lease"]
