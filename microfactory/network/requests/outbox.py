"""Delivering signed messages to the other shop, retried with backoff while it is away.

A message that must reach the other shop (A's request itself, B's answers and status
updates, A's reply to a counter-offer) gets an `OutboxItem` in the same transaction that
signs it. After the commit the route tries it at once; if the other shop is down (or
answers 5xx, 408, 429) the item is tried again later, 2 s after the first failure, doubling
up to 2 minutes, until the message's own expiry. A 4xx answer is final (the shop read the
message and refused it); a request refused, or expired untaken, is kept as "undelivered".
The scheduler's outbox job (`install`) picks up due items every few seconds, also after a
restart: the table is the state, nothing is kept in memory.

Per request, items go out in order: a later one waits while an earlier one is pending, so
the other shop never hears "started" before "accepted". Each attempt first claims its item
with one conditional UPDATE (due and pending → due again only after a lease), so the
route's immediate attempt and the scheduler never send the same item twice at once.
"""

from __future__ import annotations

import datetime as dt
import logging

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory.config import Settings
from microfactory.db import utcnow
from microfactory.network.requests import holdings, service
from microfactory.network.requests.models import OutboxItem, RequestMessage
from microfactory.scheduler import take_lease

log = logging.getLogger("microfactory.network.requests")

CHECK_S = 3.0  # how often the scheduler looks for due items
FIRST_RETRY_S = 2.0
MAX_RETRY_S = 120.0
CLAIM_S = 60.0  # an attempt's lease: longer than delivering's timeout (15 s)
LEASE_NAME = "network_outbox"
LEASE_TTL = dt.timedelta(seconds=10 * CHECK_S)
RETRYABLE = {408, 425, 429}


def backoff_s(attempts: int) -> float:
    """Return the wait before the next attempt after `attempts` failed ones."""
    return float(min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** max(0, attempts - 1)))


def enqueue(
    *, session: AsyncSession, msg: RequestMessage, url: str, now: dt.datetime
) -> OutboxItem:
    """Queue a sent message for delivery (in the transaction that signs it)."""
    expires = dt.datetime.fromisoformat(str(msg.payload["expiresAt"]).replace("Z", "+00:00"))
    item = OutboxItem(
        request_id=msg.request_id,
        url=url,
        state="pending",
        attempts=0,
        next_attempt_at=now,
        expires_at=expires,
        created_at=now,
    )
    msg.outbox = item
    return item


async def _claim(session: AsyncSession, item: OutboxItem, now: dt.datetime) -> bool:
    result = await session.execute(
        update(OutboxItem)
        .where(
            OutboxItem.id == item.id,
            OutboxItem.state == "pending",
            OutboxItem.next_attempt_at <= now,
        )
        .values(next_attempt_at=now + dt.timedelta(seconds=CLAIM_S))
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def deliver_request(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    request_id: str,
    now: dt.datetime | None = None,
) -> None:
    """Deliver a request's pending messages in order; stop at the first one not taken."""
    while True:
        at = now or utcnow()
        async with sessionmaker() as session, session.begin():
            item = (
                await session.execute(
                    select(OutboxItem)
                    .where(OutboxItem.request_id == request_id, OutboxItem.state == "pending")
                    .order_by(OutboxItem.id)
                    .limit(1)
                )
            ).scalar_one_or_none()
            if item is None:
                return
            if item.expires_at <= at:
                item.state = "expired"
                item.note = "the message expired before the other shop took it"
                await service.note_undelivered(session=session, message_id=item.message_id)
                continue_after = True
            elif not await _claim(session, item, at):
                return  # backing off, or another attempt holds it: order waits for it
            else:
                continue_after = False
            msg = await session.get(RequestMessage, item.message_id)
            item_id, url, token = item.id, item.url, msg.jws if msg else ""
        if continue_after:
            continue
        code, note = await service.deliver(url, token)
        done = await _record(sessionmaker, item_id, code, note)
        if not done:
            return


async def _record(
    sessionmaker: async_sessionmaker[AsyncSession], item_id: int, code: int | None, note: str
) -> bool:
    """Note how an attempt went; return whether the item is finished (taken or refused)."""
    at = utcnow()
    async with sessionmaker() as session, session.begin():
        item = await session.get(OutboxItem, item_id)
        if item is None:
            return True
        item.attempts += 1
        item.note = note[:300]
        await service.note_delivery(
            session=session, message_id=item.message_id, status=code, note=note
        )
        # A 409 replay: the other shop holds this message (or a later one) already, e.g. an
        # attempt whose answer was lost on the way back. It was taken.
        if code is not None and (200 <= code < 300 or (code == 409 and "(a replay)" in note)):
            item.state = "delivered"
            item.delivered_at = at
            return True
        if code is not None and 400 <= code < 500 and code not in RETRYABLE:
            item.state = "refused"
            await service.note_undelivered(session=session, message_id=item.message_id)
            log.warning("request %s: the other shop refused a message: %s", item.request_id, note)
            return True
        wait = backoff_s(item.attempts)
        item.next_attempt_at = at + dt.timedelta(seconds=wait)
        log.info("request %s: not delivered (%s); retrying in %.0f s", item.request_id, note, wait)
        return False


async def deliver_due(*, sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """Try every request with a due item; return how many requests were tried."""
    async with sessionmaker() as session:
        due = list(
            (
                await session.execute(
                    select(OutboxItem.request_id)
                    .where(OutboxItem.state == "pending", OutboxItem.next_attempt_at <= utcnow())
                    .distinct()
                    .limit(100)
                )
            ).scalars()
        )
    for request_id in due:
        await deliver_request(sessionmaker=sessionmaker, request_id=request_id)
    return len(due)


async def retry_now(*, session: AsyncSession, now: dt.datetime) -> int:
    """Make every pending item due now (after a restart: the other shop may be back)."""
    result = await session.execute(
        update(OutboxItem)
        .where(OutboxItem.state == "pending", OutboxItem.next_attempt_at > now)
        .values(next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def outbox_tick(
    sessionmaker: async_sessionmaker[AsyncSession],
    holder: str,
    started: dict[str, bool],
    settings: Settings | None = None,
) -> None:
    """Deliver due items if this process holds the outbox lease (and tell hubs our designs)."""
    try:
        async with sessionmaker() as session, session.begin():
            now = utcnow()
            if not await take_lease(
                session=session, holder=holder, now=now, ttl=LEASE_TTL, name=LEASE_NAME
            ):
                return
            if not started.get("once"):
                # A fresh start tries pending messages at once rather than after the backoff
                # the last process had reached. Should another process be delivering one
                # right now, the second copy is answered 409 replay: taken, as above.
                started["once"] = True
                await retry_now(session=session, now=now)
        await deliver_due(sessionmaker=sessionmaker)
        if settings is not None:
            await holdings.push_if_due(sessionmaker=sessionmaker, settings=settings)
    except Exception:  # a failed tick must not stop the scheduler; the next one retries
        log.exception("network outbox tick failed")


def install(
    scheduler: AsyncIOScheduler,
    sessionmaker: async_sessionmaker[AsyncSession],
    holder: str,
    settings: Settings | None = None,
) -> None:
    """Add the outbox job to the scheduler: now (after a restart), then every CHECK_S."""
    scheduler.add_job(
        outbox_tick,
        "interval",
        args=(sessionmaker, holder, {}, settings),
        seconds=CHECK_S,
        next_run_time=dt.datetime.now(dt.UTC),
        id="microfactory-network-outbox",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=int(CHECK_S),
    )
