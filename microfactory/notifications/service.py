"""Outbox rules: every message is recorded first, once per event; each channel the member
chose gets a delivery row, which the sender claims, sends outside any transaction, and
retries with backoff.

Where messages go:

- the dashboard always (the Messages page and the unread badge);
- email, when the server has SMTP (`MICROFACTORY_SMTP_URL`) and the member an address and
  has not turned it off;
- any of the shop's push channels (apprise URLs an admin set up) the member picked;
- the member's own apprise URL, when the shop allows it (`MICROFACTORY_NOTIFY_MEMBER_URLS`).

Members choose the job events they hear about (`EVENTS`); booking messages (confirmations,
reminders, releases) always go.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory.accounts.models import Role, User
from microfactory.config import Settings
from microfactory.db import utcnow
from microfactory.errors import InvalidInputError, NotFoundError
from microfactory.notifications import live, push, smtp
from microfactory.notifications.models import (
    Notification,
    NotificationChannel,
    NotificationDelivery,
    NotificationPreference,
)

log = logging.getLogger(__name__)

#: the job events a member can choose, in the order the account page lists them
EVENTS: tuple[str, ...] = ("approved", "started", "finished", "failed", "waiting", "bed_clear")
EVENT_LABELS = {
    "approved": "My job was approved",
    "started": "My job started on a machine",
    "finished": "My job finished",
    "failed": "My job failed or was cancelled by someone else (with the reason)",
    "waiting": "My job waits for something beyond the queue (no machine can run it, a booking)",
    "bed_clear": "A bed needs clearing (my finished part; operators: every machine)",
}
#: which choice a message kind belongs to; kinds not listed (bookings) always go
KIND_EVENT = {
    "job_approved": "approved",
    "job_started": "started",
    "job_finished": "finished",
    "job_failed": "failed",
    "job_cancelled": "failed",
    "job_waiting": "waiting",
    "bed_clear": "bed_clear",
}
BACKOFF_FIRST_S = 30.0
BACKOFF_FACTOR = 4.0
BACKOFF_MAX_S = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class Choices:
    """A member's choices, with the defaults filled in."""

    events: frozenset[str]
    email: bool
    channel_ids: frozenset[int]
    own_url: str | None


DEFAULT_CHOICES = Choices(frozenset(EVENTS), True, frozenset(), None)


# -- recording ------------------------------------------------------------------------------


async def enqueue(
    *,
    session: AsyncSession,
    user_id: int,
    kind: str,
    subject: str,
    body: str = "",
    booking_id: int | None = None,
    job_id: int | None = None,
    dedupe_key: str | None = None,
    now: dt.datetime | None = None,
) -> Notification | None:
    """Record a message for a member, with a delivery row per chosen channel.

    Returns None when the member turned this kind of message off, or when `dedupe_key`
    was already used for them (the event was handled before: a retry, a restart).
    """
    choices = await choices_for(session=session, user_id=user_id)
    event = KIND_EVENT.get(kind)
    if event is not None and event not in choices.events:
        return None
    now = now or utcnow()
    values = {
        "user_id": user_id,
        "kind": kind,
        "subject": subject[:200],
        "body": body,
        "booking_id": booking_id,
        "job_id": job_id,
        "dedupe_key": dedupe_key,
        "created_at": now,
        "attempts": 0,
    }
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    # One statement decides, even between two processes handling the same event.
    note_id = (
        await session.execute(
            insert(Notification)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["user_id", "dedupe_key"])
            .returning(Notification.id)
        )
    ).scalar_one_or_none()
    if note_id is None:
        return None
    live.recorded(session, user_id, kind)  # the badge moves once this commits
    for channel, channel_id in await _channels_for(session=session, user_id=user_id, c=choices):
        session.add(
            NotificationDelivery(
                notification_id=note_id,
                channel=channel,
                channel_id=channel_id,
                next_attempt_at=now,
            )
        )
    await session.flush()
    return await session.get(Notification, note_id)


async def _channels_for(
    *, session: AsyncSession, user_id: int, c: Choices
) -> list[tuple[str, int | None]]:
    out: list[tuple[str, int | None]] = []
    if c.email:
        email = (await session.execute(select(User.email).where(User.id == user_id))).scalar()
        if email:
            out.append(("email", None))
    if c.channel_ids:
        rows = await session.execute(
            select(NotificationChannel.id).where(
                NotificationChannel.id.in_(sorted(c.channel_ids)),
                NotificationChannel.enabled.is_(True),
            )
        )
        out.extend(("shop", int(cid)) for cid in rows.scalars())
    if c.own_url:
        out.append(("own", None))
    return out


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


async def staff_ids(*, session: AsyncSession) -> list[int]:
    """Return the active operators and admins: they hear that a bed needs clearing."""
    rows = await session.execute(
        select(User.id)
        .where(User.is_active.is_(True), User.role.in_([Role.OPERATOR, Role.ADMIN]))
        .order_by(User.id)
    )
    return [int(uid) for uid in rows.scalars()]


# -- choices and channels -------------------------------------------------------------------


async def choices_for(*, session: AsyncSession, user_id: int) -> Choices:
    """Return a member's choices (the defaults when they never saved any)."""
    row = await session.get(NotificationPreference, user_id)
    if row is None:
        return DEFAULT_CHOICES
    return Choices(
        events=frozenset(e for e in row.events or [] if e in EVENTS),
        email=bool(row.email),
        channel_ids=frozenset(int(i) for i in row.channel_ids or []),
        own_url=row.own_url or None,
    )


async def save_choices(
    *,
    session: AsyncSession,
    user_id: int,
    settings: Settings,
    events: Iterable[str],
    email: bool,
    channel_ids: Iterable[int],
    own_url: str | None,
    keep_own_url: bool = False,
) -> Choices:
    """Store a member's choices; refuse unknown events, channels and unusable URLs.

    `keep_own_url` keeps the stored URL (the form shows only its masked form, so a member who
    saves without retyping it keeps it).
    """
    chosen = list(dict.fromkeys(events))
    unknown = [e for e in chosen if e not in EVENTS]
    if unknown:
        raise InvalidInputError(
            f"unknown event(s) {', '.join(map(repr, unknown))}; choose from {', '.join(EVENTS)}"
        )
    ids = sorted(set(channel_ids))
    if ids:
        known = set(
            (
                await session.execute(
                    select(NotificationChannel.id).where(
                        NotificationChannel.id.in_(ids), NotificationChannel.enabled.is_(True)
                    )
                )
            ).scalars()
        )
        missing = [i for i in ids if i not in known]
        if missing:
            raise InvalidInputError(f"the shop has no channel {missing[0]}")
    row = await session.get(NotificationPreference, user_id)
    url = (own_url or "").strip() or None
    if keep_own_url and url is None and row is not None:
        url = row.own_url
    elif url is not None:
        if not settings.notify_member_urls:
            raise InvalidInputError("this shop does not allow members' own push URLs")
        try:
            push.check(url)
        except push.PushError as exc:
            raise InvalidInputError(f"own_url: {exc}") from None
    if row is None:
        row = NotificationPreference(user_id=user_id)
        session.add(row)
    row.events = [e for e in EVENTS if e in chosen]
    row.email = email
    row.channel_ids = ids
    row.own_url = url
    await session.flush()
    return await choices_for(session=session, user_id=user_id)


async def list_channels(
    *, session: AsyncSession, enabled_only: bool = False
) -> list[NotificationChannel]:
    """Return the shop's push channels by name."""
    stmt = select(NotificationChannel).order_by(NotificationChannel.name)
    if enabled_only:
        stmt = stmt.where(NotificationChannel.enabled.is_(True))
    return list((await session.execute(stmt)).scalars())


async def add_channel(*, session: AsyncSession, name: str, url: str) -> NotificationChannel:
    """Add a push channel to the shop (admins); refuse a URL apprise cannot use."""
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidInputError("name: give the channel a name of 1 to 100 characters")
    try:
        push.check(url)
    except push.PushError as exc:
        raise InvalidInputError(f"url: {exc}") from None
    taken = await session.execute(
        select(NotificationChannel.id).where(NotificationChannel.name == name)
    )
    if taken.first() is not None:
        raise InvalidInputError(f"name: the shop already has a channel named {name!r}")
    channel = NotificationChannel(name=name, url=url.strip())
    session.add(channel)
    await session.flush()
    return channel


async def delete_channel(*, session: AsyncSession, channel_id: int) -> None:
    """Remove a push channel; its pending deliveries go with it."""
    channel = await session.get(NotificationChannel, channel_id)
    if channel is None:
        raise NotFoundError(f"channel {channel_id} not found")
    await session.delete(channel)
    await session.flush()


# -- delivery -------------------------------------------------------------------------------


def backoff(attempts: int) -> dt.timedelta:
    """Return the wait after the `attempts`-th failed attempt: 30 s, 2 min, 8 min, ... 6 h."""
    seconds = BACKOFF_FIRST_S * BACKOFF_FACTOR ** max(0, attempts - 1)
    return dt.timedelta(seconds=min(seconds, BACKOFF_MAX_S))


@dataclass(frozen=True, slots=True)
class _Claimed:
    delivery_id: int
    notification_id: int
    user_id: int
    channel: str
    channel_name: str
    address: str | None  # an email address or an apprise URL (a secret: never logged)
    subject: str
    body: str
    attempt: int


async def deliver_pending(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    now: dt.datetime | None = None,
    limit: int = 50,
) -> int:
    """Send the deliveries that are due; return how many were sent.

    No transaction is open while SMTP or a push service talks (up to 20 s a message): each
    delivery is claimed in one short transaction (the attempt counted and the next attempt
    moved past the backoff, so no other process takes it meanwhile), sent, and its result
    recorded in another. A crash between sending and recording re-sends that one message
    once its backoff has passed.
    """
    now = now or utcnow()
    async with sessionmaker() as session:
        ids = list(
            (
                await session.execute(
                    select(NotificationDelivery.id)
                    .where(
                        NotificationDelivery.done_at.is_(None),
                        NotificationDelivery.next_attempt_at <= now,
                    )
                    .order_by(NotificationDelivery.next_attempt_at, NotificationDelivery.id)
                    .limit(limit)
                )
            ).scalars()
        )
    sent = 0
    for delivery_id in ids:
        claim = await _claim(sessionmaker, settings, delivery_id, now)
        if claim is None:
            continue  # another process took it, or it cannot be sent (recorded as given up)
        error = None
        try:
            await _send(claim, settings)
        except (OSError, smtp.SmtpError, push.PushError) as exc:
            error = str(exc)[:500] or type(exc).__name__
        await _record(sessionmaker, settings, claim, error, utcnow())
        sent += error is None
    return sent


async def _send(claim: _Claimed, settings: Settings) -> None:
    assert claim.address is not None
    # smtplib and apprise block: run them in a thread so the event loop keeps serving.
    if claim.channel == "email":
        assert settings.smtp_url is not None
        await asyncio.to_thread(
            smtp.send, settings.smtp_url, settings.mail_from, claim.address, claim.subject,
            claim.body,
        )  # fmt: skip
    else:
        await asyncio.to_thread(push.send, claim.address, claim.subject, claim.body)


async def _claim(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    delivery_id: int,
    now: dt.datetime,
) -> _Claimed | None:
    """Count one attempt at a delivery; return what to send if it is ours to send."""
    async with sessionmaker() as session, session.begin():
        row = (
            await session.execute(
                select(NotificationDelivery, Notification, User)
                .join(Notification, Notification.id == NotificationDelivery.notification_id)
                .join(User, User.id == Notification.user_id)
                .where(
                    NotificationDelivery.id == delivery_id,
                    NotificationDelivery.done_at.is_(None),
                    NotificationDelivery.next_attempt_at <= now,
                )
            )
        ).first()
        if row is None:
            return None
        delivery, note, user = row
        address, name, why_not = await _address(session, settings, delivery, user)
        if why_not is not None:
            # Nothing a retry could change until someone edits the settings: give up now.
            await session.execute(
                update(NotificationDelivery)
                .where(NotificationDelivery.id == delivery_id)
                .values(done_at=now, last_error=why_not)
                .execution_options(synchronize_session=False)
            )
            return None
        attempt = delivery.attempts + 1
        claimed = await session.execute(
            update(NotificationDelivery)
            .where(
                NotificationDelivery.id == delivery_id,
                NotificationDelivery.attempts == delivery.attempts,
                NotificationDelivery.done_at.is_(None),
            )
            .values(attempts=attempt, next_attempt_at=now + backoff(attempt))
            .execution_options(synchronize_session=False)
        )
        if getattr(claimed, "rowcount", 0) != 1:
            return None
        return _Claimed(
            delivery_id, note.id, user.id, delivery.channel, name, address, note.subject,
            note.body, attempt,
        )  # fmt: skip


async def _address(
    session: AsyncSession, settings: Settings, delivery: NotificationDelivery, user: User
) -> tuple[str | None, str, str | None]:
    """Return (address, channel name for logs, why it cannot be sent)."""
    if delivery.channel == "email":
        if not settings.smtp_url:
            return None, "email", "email is not set up on this server"
        if not user.email:
            return None, "email", "the member has no email address"
        return user.email, "email", None
    if delivery.channel == "shop":
        channel = await session.get(NotificationChannel, delivery.channel_id or 0)
        if channel is None or not channel.enabled:
            return None, "shop channel", "the shop's channel is gone or turned off"
        return channel.url, f"shop channel {channel.name!r}", None
    prefs = await session.get(NotificationPreference, user.id)
    if not settings.notify_member_urls:
        return None, "own URL", "this shop no longer allows members' own push URLs"
    if prefs is None or not prefs.own_url:
        return None, "own URL", "the member removed their own push URL"
    return prefs.own_url, "own URL", None


async def _record(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    claim: _Claimed,
    error: str | None,
    now: dt.datetime,
) -> None:
    gave_up = error is not None and claim.attempt >= settings.notify_max_attempts
    if error is not None:
        # Only the channel's name and the redacted reason: never the address or URL.
        log.warning(
            "notification %s to user %s by %s failed (attempt %s of %s%s): %s",
            claim.notification_id,
            claim.user_id,
            claim.channel_name,
            claim.attempt,
            settings.notify_max_attempts,
            ", giving up" if gave_up else "",
            error,
        )
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(NotificationDelivery)
            .where(NotificationDelivery.id == claim.delivery_id)
            .values(
                sent_at=None if error else now,
                done_at=now if error is None or gave_up else None,
                last_error=error,
            )
            .execution_options(synchronize_session=False)
        )
        note_values: dict[str, object] = {
            "attempts": Notification.attempts + 1,
            "last_error": error,
        }
        if error is None:
            note_values["sent_at"] = func.coalesce(Notification.sent_at, now)
        await session.execute(
            update(Notification)
            .where(Notification.id == claim.notification_id)
            .values(**note_values)
            .execution_options(synchronize_session=False)
        )


class Outbox:
    """Send due deliveries soon after messages are recorded, in a task of this process.

    The scheduler's tick (every 30 s, in the process holding its lease) sends them too and
    retries failures; this only shortens the wait for new messages. Claims make the two safe
    to overlap, in one process or several.
    """

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def wake(self) -> None:
        """Send what is due now (after the commit that recorded it)."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._run(), name="notification-outbox")

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await deliver_pending(sessionmaker=self.sessionmaker, settings=self.settings)
            except Exception:  # the database may be away: the scheduler's tick retries
                log.exception("sending notifications failed")
            if not self._again:
                return

    async def idle(self) -> None:
        """Wait until nothing is being sent (tests; shutdown)."""
        while self._task is not None and not self._task.done():
            await asyncio.wait({self._task})

    async def stop(self) -> None:
        """Stop sending (what is unsent stays due for the next start)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
