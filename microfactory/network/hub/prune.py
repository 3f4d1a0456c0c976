"""Forget stored reports nobody needs any more: superseded, long expired, or of revoked shops.

A hub stores every report as received (mirroring hubs pull them with `?since=`), but only a
shop's newest report says anything: routing and the shop list read the index built from it,
and a hub mirroring this one needs only the newest report of each shop (an older one would
be refused there as a replay once the newer one is taken). So the scheduler (a hub's job in
microfactory/scheduler.py) deletes, at most every PRUNE_EVERY_S:

- superseded reports: every report of a shop but its newest (by cursor);
- reports that expired more than EXPIRED_KEEP ago, with their shops' index rows: the shop
  list marks an expired shop for a week, then forgets it (its pin and last sequence stay,
  so a replay of an old report is still refused);
- the reports of revoked shops (never served, never indexed);
- the routing index's change log beyond its last LOG_KEEP versions (`memindex`).

The report with the highest cursor is always kept: SQLite hands out max(cursor) + 1 to the
next report, so deleting the top one could give a new report a cursor that a mirroring hub
has already read past. A mirror's cursor stays valid: cursors only have gaps where reports
were deleted, and `?since=` reads on from the first stored cursor at or after it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from microfactory.config import Settings
from microfactory.network.hub import index
from microfactory.network.hub.models import (
    HubIndexLog,
    HubIndexVersion,
    HubOffer,
    HubReport,
    HubShop,
    HubShopIndex,
    PinStatus,
)

log = logging.getLogger(__name__)

EXPIRED_KEEP = dt.timedelta(days=7)
LOG_KEEP = 50_000  # versions of the index's change log kept: a copy further behind reloads
PRUNE_EVERY_S = 600.0  # the scheduler ticks every 30 s; pruning more often buys nothing


@dataclass(frozen=True)
class Pruned:
    """How many reports (and index rows of shops) one run deleted."""

    superseded: int
    expired: int
    revoked: int
    shops_forgotten: int


def _count(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


async def prune_reports(*, session: AsyncSession, now: dt.datetime) -> Pruned:
    """Delete superseded, long-expired and revoked shops' reports (see the module)."""
    top = (await session.execute(select(func.max(HubReport.cursor)))).scalar_one_or_none()
    if top is None:
        return Pruned(0, 0, 0, 0)
    newer = aliased(HubReport)
    newest_of_shop = (
        select(func.max(newer.cursor)).where(newer.shop_id == HubReport.shop_id).scalar_subquery()
    )
    superseded = await session.execute(
        delete(HubReport)
        .where(HubReport.cursor < top, HubReport.cursor < newest_of_shop)
        .execution_options(synchronize_session=False)
    )
    cutoff = now - EXPIRED_KEEP
    expired = await session.execute(
        delete(HubReport)
        .where(HubReport.cursor < top, HubReport.expires_at < cutoff)
        .execution_options(synchronize_session=False)
    )
    revoked_ids = select(HubShop.shop_id).where(HubShop.status == PinStatus.REVOKED)
    revoked = await session.execute(
        delete(HubReport)
        .where(HubReport.cursor < top, HubReport.shop_id.in_(revoked_ids))
        .execution_options(synchronize_session=False)
    )
    stale = list(
        (
            await session.execute(
                select(HubShopIndex.shop_id).where(HubShopIndex.expires_at < cutoff)
            )
        ).scalars()
    )
    for start in range(0, len(stale), 500):
        some = stale[start : start + 500]
        await session.execute(
            delete(HubOffer)
            .where(HubOffer.shop_id.in_(some))
            .execution_options(synchronize_session=False)
        )
        await session.execute(
            delete(HubShopIndex)
            .where(HubShopIndex.shop_id.in_(some))
            .execution_options(synchronize_session=False)
        )
    await _prune_log(session)
    if stale:  # last: the version row's lock is held until commit
        await index.bump(session=session, shop_ids=stale)
    pruned = Pruned(_count(superseded), _count(expired), _count(revoked), len(stale))
    if any((pruned.superseded, pruned.expired, pruned.revoked, pruned.shops_forgotten)):
        log.info(
            "hub: pruned %s superseded, %s expired and %s revoked shops' reports; "
            "forgot %s shops expired since %s",
            pruned.superseded,
            pruned.expired,
            pruned.revoked,
            pruned.shops_forgotten,
            cutoff.isoformat(timespec="minutes"),
        )
    return pruned


async def _prune_log(session: AsyncSession) -> None:
    """Keep the index's change log to its last LOG_KEEP versions (see `memindex`)."""
    version = (
        await session.execute(select(HubIndexVersion.version).where(HubIndexVersion.id == 1))
    ).scalar_one_or_none()
    if version is None or version - LOG_KEEP <= 0:
        return
    floor = version - LOG_KEEP
    await session.execute(
        delete(HubIndexLog)
        .where(HubIndexLog.version < floor)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(HubIndexVersion)
        .where(HubIndexVersion.id == 1, HubIndexVersion.log_floor < floor)
        .values(log_floor=floor)
    )


_last_run: dict[str, dt.datetime] = {}


async def scheduled_prune(session: AsyncSession, now: dt.datetime, settings: Settings) -> object:
    """The scheduler's task: prune at most every PRUNE_EVERY_S (per process holding the lease)."""
    where = str(settings.database_url or settings.data_dir)
    last = _last_run.get(where)
    if last is not None and (now - last).total_seconds() < PRUNE_EVERY_S:
        return None
    _last_run[where] = now
    return await prune_reports(session=session, now=now)
