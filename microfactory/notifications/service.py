"""Outbox rules: every message is recorded first; email, if configured, is a delivery attempt."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory.accounts.models import User
from microfactory.config import Settings
from microfactory.db import utcnow
from microfactory.notifications import smtp
from microfactory.notifications.models import Notification

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 5


async def enqueue(
    *,
    session: AsyncSession,
    user_id: int,
    kind: str,
    subject: str,
    body: str = "",
    booking_id: int | None = None,
) -> Notification:
    """Record a message for a member in the outbox."""
    note = Notification(
        user_id=user_id, kind=kind, subject=subject[:200], body=body, booking_id=booking_id
    )
    session.add(note)
    await session.flush()
    return note


async def list_for_user(
    *, session: AsyncSession, user_id: int, limit: int = 50
) -> list[Notification]:
    """Return a member's messages, newest first."""
    result = await session.execute(
        select(Notification)
        .where(Notification.user_id == user_id)
        .order_by(Notification.created_at.desc(), Notification.id.desc())
        .limit(limit)
    )
    return list(result.scalars())


async def unread_count(*, session: AsyncSession, user_id: int) -> int:
    """Return how many of a member's messages they have not seen on the dashboard."""
    result = await session.execute(
        select(func.count())
        .select_from(Notification)
        .where(Notification.user_id == user_id, Notification.read_at.is_(None))
    )
    return int(result.scalar_one())


async def mark_read(*, session: AsyncSession, user_id: int, now: dt.datetime) -> int:
    """Mark every unread message of a member as read; return how many."""
    result = await session.execute(
        update(Notification)
        .where(Notification.user_id == user_id, Notification.read_at.is_(None))
        .values(read_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def deliver_pending(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    now: dt.datetime | None = None,
    limit: int = 50,
) -> int:
    """Email unsent messages when SMTP is configured; return how many were sent.

    No transaction is open while SMTP talks (up to 20 s a message): each message is claimed
    in one short transaction (the attempt counted, so two processes never both send it),
    sent, and its result recorded in another. A crash between sending and recording re-sends
    at most that one message.
    """
    if not settings.smtp_url:
        return 0
    now = now or utcnow()
    async with sessionmaker() as session:
        ids = list(
            (
                await session.execute(
                    select(Notification.id)
                    .where(Notification.sent_at.is_(None), Notification.attempts < MAX_ATTEMPTS)
                    .order_by(Notification.id)
                    .limit(limit)
                )
            ).scalars()
        )
    sent = 0
    for note_id in ids:
        claim = await _claim(sessionmaker, note_id)
        if claim is None:
            continue  # another process took it, or it was sent meanwhile
        email, subject, body, user_id = claim
        error = None
        try:
            # smtplib blocks: run it in a thread so the event loop keeps serving.
            await asyncio.to_thread(
                smtp.send, settings.smtp_url, settings.mail_from, email, subject, body
            )
        except (OSError, smtp.SmtpError) as exc:
            error = str(exc)[:500]
            log.warning("email to user %s failed: %s", user_id, exc)
        async with sessionmaker() as session, session.begin():
            await session.execute(
                update(Notification)
                .where(Notification.id == note_id)
                .values(sent_at=None if error else now, last_error=error)
                .execution_options(synchronize_session=False)
            )
        sent += error is None
    return sent


async def _claim(
    sessionmaker: async_sessionmaker[AsyncSession], note_id: int
) -> tuple[str, str, str, int] | None:
    """Count one attempt at a message; return (email, subject, body, user) if it is ours."""
    async with sessionmaker() as session, session.begin():
        row = (
            await session.execute(
                select(
                    Notification.attempts,
                    Notification.subject,
                    Notification.body,
                    User.id,
                    User.email,
                )
                .join(User, User.id == Notification.user_id)
                .where(Notification.id == note_id, Notification.sent_at.is_(None))
            )
        ).first()
        if row is None or row.attempts >= MAX_ATTEMPTS:
            return None
        if not row.email:
            await session.execute(
                update(Notification)
                .where(Notification.id == note_id)
                .values(attempts=MAX_ATTEMPTS, last_error="the member has no email address")
                .execution_options(synchronize_session=False)
            )
            return None  # nothing to retry until the member adds an address
        claimed = await session.execute(
            update(Notification)
            .where(Notification.id == note_id, Notification.attempts == row.attempts)
            .values(attempts=row.attempts + 1)
            .execution_options(synchronize_session=False)
        )
        if getattr(claimed, "rowcount", 0) != 1:
            return None
        return str(row.email), row.subject, row.body, int(row.id)
