"""The bookings' routers and dashboard pages for create_app, and their subscription to the job
lifecycle (check-in when a job starts)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory.bookings import live
from microfactory.bookings import service as booking_service
from microfactory.bookings.pages import router as pages_router
from microfactory.bookings.routes import router as bookings_router
from microfactory.events import EventBus, JobChanged


def routers() -> list[APIRouter]:
    """Return the routers to include in the app."""
    return [bookings_router, pages_router]


def subscribe(
    bus: EventBus,
    sessionmaker: async_sessionmaker[AsyncSession],
    publish: Callable[[int], None] | None = None,
) -> None:
    """Check a member in when a job of theirs starts on a machine they booked.

    With `publish`, committed changes of machine time also go to it (the live stream).
    """
    if publish is not None:
        info = dict(sessionmaker.kw.get("info") or {})
        info[live.PUBLISHER_KEY] = publish
        sessionmaker.configure(info=info)

    async def on_started(event: JobChanged) -> None:
        if event.machine_id is None:
            return
        async with sessionmaker() as session, session.begin():
            await booking_service.check_in_by_job(
                session=session,
                user_id=event.owner_id,
                machine_id=event.machine_id,
                at=event.started_at or event.at,
            )

    bus.subscribe("job.started", on_started)
