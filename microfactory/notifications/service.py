"""Outbox rules: every message is recorded first; email, if configured, is a delivery attempt."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

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


async def deliver_pending(
    *, session: AsyncSession, settings: Settings, now: dt.datetime | None = None, limit: int = 50
) -> int:
    """Email unsent messages when SMTP is configured; return how many were sent."""
    if not settings.smtp_url:
        return 0
    now = now or utcnow()
    result = await session.execute(
        select(Notification, User.email)
        .join(User, User.id == Notification.user_id)
        .where(Notification.sent_at.is_(None), Notification.attempts < MAX_ATTEMPTS)
        .order_by(Notification.id)
        .limit(limit)
    )
    sent = 0
    for note, email in result.all():
        note.attempts += 1
        if not email:
            note.attempts = MAX_ATTEMPTS  # nothing to retry until the member adds an address
            note.last_error = "the member has no email address"
            continue
        try:
            # smtplib blocks: run it in a thread so the event loop keeps serving.
            await asyncio.to_thread(
                smtp.send, settings.smtp_url, settings.mail_from, email, note.subject, note.body
            )
        except (OSError, smtp.SmtpError) as exc:
            note.last_error = str(exc)[:500]
            log.warning("email to user %s failed: %s", note.user_id, exc)
            continue
        note.sent_at = now
        note.last_error = None
        sent += 1
    await session.flush()
    return sent
