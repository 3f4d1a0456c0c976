"""The outbox listens to the job lifecycle: a member hears when their job is approved,
starts, and ends (finished: waiting for them to collect it; failed; cancelled by someone)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory.events import EventBus, JobChanged
from microfactory.notifications import service

_ENDED_WORDS = {"finished": "finished", "failed": "failed", "cancelled": "was cancelled"}


def subscribe(bus: EventBus, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Tell the owner when their job finished, failed or was cancelled by someone else."""

    async def on_ended(event: JobChanged) -> None:
        if event.to_state == "cancelled" and event.actor_id == event.owner_id:
            return  # they cancelled it themselves
        words = _ENDED_WORDS.get(event.to_state, event.to_state)
        body = event.reason or ""
        if event.to_state == "finished":
            body = "Collect it from the machine; an operator clears the bed after."
        async with sessionmaker() as session, session.begin():
            await service.enqueue(
                session=session,
                user_id=event.owner_id,
                kind=f"job_{event.to_state}",
                subject=f"Your job {event.title!r} {words}",
                body=body,
            )

    async def on_approved(event: JobChanged) -> None:
        if event.actor_id == event.owner_id:
            return  # trusted members and operators approve their own jobs on submission
        async with sessionmaker() as session, session.begin():
            await service.enqueue(
                session=session,
                user_id=event.owner_id,
                kind="job_approved",
                subject=f"Your job {event.title!r} was approved",
                body="It waits in the queue for a free machine.",
            )

    async def on_started(event: JobChanged) -> None:
        async with sessionmaker() as session, session.begin():
            await service.enqueue(
                session=session,
                user_id=event.owner_id,
                kind="job_started",
                subject=f"Your job {event.title!r} started",
                body="Follow it live on its job page.",
            )

    bus.subscribe("job.ended", on_ended)
    bus.subscribe("job.approved", on_approved)
    bus.subscribe("job.started", on_started)
