"""The scheduler's network job: push the capacity report to the hubs (see push.py)."""

from __future__ import annotations

import datetime as dt
import logging

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory.config import Settings
from microfactory.db import utcnow
from microfactory.network import push
from microfactory.scheduler import take_lease

log = logging.getLogger("microfactory.network.push")

LEASE_NAME = "network_push"  # one process per shop pushes, as for the other scheduled tasks
LEASE_TTL = dt.timedelta(seconds=6 * push.CHECK_S)


async def push_tick(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, holder: str
) -> None:
    """Push to the due hubs if this process holds the network lease."""
    try:
        now = utcnow()
        async with sessionmaker() as session, session.begin():
            if not await take_lease(
                session=session, holder=holder, now=now, ttl=LEASE_TTL, name=LEASE_NAME
            ):
                return
        await push.push_due(sessionmaker=sessionmaker, settings=settings, now=now)
    except Exception:  # a failed tick must not stop the scheduler; the next one retries
        log.exception("network push tick failed")


def install(
    scheduler: AsyncIOScheduler,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    holder: str,
) -> None:
    """Add the push job to the scheduler: now, then every push.CHECK_S seconds."""
    scheduler.add_job(
        push_tick,
        "interval",
        args=(sessionmaker, settings, holder),
        seconds=push.CHECK_S,
        next_run_time=dt.datetime.now(dt.UTC),  # push soon after start
        id="microfactory-network-push",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=int(push.CHECK_S),
    )
