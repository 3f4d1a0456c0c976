"""The making shop's job lifecycle reports progress on fabrication requests by itself.

A job made from an incoming request sends the requesting shop a signed update when it
starts on a machine (`started`) and when its bed is cleared with an outcome (`finished`,
good or bad). Each runs after the lifecycle's commit, in a transaction of its own, then
delivers the update through the outbox (retried while the requesting shop is away); an
operator may still report by hand what the machine cannot tell
(`collected`).
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory.config import Settings
from microfactory.events import EventBus, JobChanged
from microfactory.jobs.models import Job
from microfactory.network import identity
from microfactory.network.requests import live, outbox, service
from microfactory.network.requests.models import FabricationRequest

log = logging.getLogger("microfactory.network.requests")


async def on_job_changed(
    event: JobChanged, *, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    """Send `started` or `finished` for the request a job was made from, if any."""
    if event.topic == "job.started":
        status = "started"
    elif event.topic == "job.cleared":
        status = "finished"
    else:
        return
    async with sessionmaker() as session, session.begin():
        req = (
            await session.execute(
                select(FabricationRequest)
                .where(
                    FabricationRequest.job_id == event.job_id,
                    FabricationRequest.direction == "incoming",
                )
                .with_for_update()
            )
        ).scalar_one_or_none()
        if req is None or req.state not in service.AFTER[status]:
            return  # not from a request, or reported already (by hand, or a reprint)
        # Only now: a shop with no requests never makes its key for a job event.
        shop = await asyncio.to_thread(identity.shop_key, settings.data_dir)
        outcome = None
        if status == "finished":
            job = await session.get(Job, event.job_id)
            outcome = job.outcome if job is not None and job.outcome in ("good", "bad") else "bad"
        msg = await service.respond(
            session=session,
            settings=settings,
            shop=shop,
            req=req,
            status=status,
            now=event.at,
            outcome=outcome,
        )
        request_id, kind = req.id, msg.kind
    # After the commit; retried by the outbox while the requesting shop is away.
    await outbox.deliver_request(sessionmaker=sessionmaker, request_id=request_id)
    log.info("request %s: %s signed for the requesting shop", request_id, kind)


def subscribe(
    bus: EventBus,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    publish: live.Publisher | None = None,
) -> None:
    """Report progress on requests from the job lifecycle.

    With `publish`, committed changes of requests also go to it (the live stream).
    """
    if publish is not None:
        info = dict(sessionmaker.kw.get("info") or {})
        info[live.PUBLISHER_KEY] = publish
        sessionmaker.configure(info=info)

    async def handler(event: JobChanged) -> None:
        await on_job_changed(event, sessionmaker=sessionmaker, settings=settings)

    bus.subscribe("job.*", handler)
