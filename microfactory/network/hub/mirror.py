"""Mirror other hubs: pull their stored reports and re-verify each one here.

A mirrored report passes the very checks a pushed one does (`service.ingest`: signature,
pin, times, sequence), with the same pinning rule (open hub: pinned on first use; closed:
pending until an admin approves). Nothing is taken on the upstream's word: a report whose
bytes were changed anywhere on the way fails its signature and is refused and counted.
Each page of reports is one transaction; the next page is checked in a worker process while
one is stored (`pipeline.PageIngest`). The HTTP calls happen outside any transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory.config import Settings
from microfactory.db import utcnow
from microfactory.errors import DomainError
from microfactory.network.hub import pipeline
from microfactory.network.hub.models import HubUpstream

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0
MAX_PAGES = 20  # per upstream per pull; the next pull continues from the cursor
# Refusals that only mean "old news": a report already held, superseded, or expired since.
STALE = {409, 422}


async def _upstream(session: AsyncSession, url: str) -> HubUpstream:
    row = await session.get(HubUpstream, url)
    if row is None:
        row = HubUpstream(url=url, stored=0, refused=0)
        session.add(row)
        await session.flush()
    return row


async def pull_one(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    url: str,
    client: httpx.AsyncClient,
    now: dt.datetime | None = None,
) -> dict[str, int]:
    """Pull one upstream from its cursor on; return counts of stored, stale and refused."""
    counts = {"stored": 0, "stale": 0, "refused": 0}
    async with sessionmaker() as session, session.begin():
        up = await _upstream(session, url)
        cursor = up.next_cursor
        up.last_attempt_at = now or utcnow()
    error: str | None = None
    last_refusal: str | None = None
    pages = pipeline.PageIngest(sessionmaker, settings, source=url, now=now)
    fed: list[Any] = []  # the reports of the page being checked, to match its outcomes

    def tally(reports: list[Any], outcomes: list[pipeline.Outcome] | None) -> None:
        nonlocal last_refusal
        for item, outcome in zip(reports, outcomes or [], strict=True):
            if not isinstance(outcome, DomainError):
                counts["stored" if outcome.status != "duplicate" else "stale"] += 1
            elif outcome.status_code in STALE:
                counts["stale"] += 1
            else:
                counts["refused"] += 1
                where = item.get("cursor") if isinstance(item, dict) else "?"
                last_refusal = f"cursor {where}: {outcome.status_code} {outcome.detail}"
                log.warning("hub mirror: refused a report from %s: %s", url, last_refusal)

    try:
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {} if cursor is None else {"since": cursor}
            try:
                resp = await client.get(f"{url}/api/v1/network/reports", params=params)
                resp.raise_for_status()
                page = resp.json()
                reports, nxt = page["reports"], int(page["next"])
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("hub mirror: pulling %s failed: %s", url, error)
                break
            tokens: list[str] = []
            for item in reports:
                token = item.get("jws") if isinstance(item, dict) else None
                tokens.append(token if isinstance(token, str) else "")
            # This page is checked (in a worker) while the one before is stored.
            tally(fed, await pages.feed(tokens))
            fed = reports
            cursor = nxt
            if not reports:
                break
        tally(fed, await pages.finish())
    finally:
        await pages.close()
    async with sessionmaker() as session, session.begin():
        up = await _upstream(session, url)
        up.next_cursor = cursor
        up.stored += counts["stored"]
        up.refused += counts["refused"]
        if last_refusal:
            up.last_refusal = last_refusal
        up.last_error = error
        if error is None:
            up.last_ok_at = now or utcnow()
    return counts


async def pull_upstreams(
    sessionmaker: async_sessionmaker[AsyncSession], now: dt.datetime, settings: Settings
) -> dict[str, dict[str, int]]:
    """Pull every configured upstream hub once (the scheduler's task)."""
    if not settings.hub or not settings.hub_upstreams:
        return {}
    results = {}
    async with httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False) as client:
        for url in settings.hub_upstreams:
            results[url] = await pull_one(
                sessionmaker=sessionmaker, settings=settings, url=url, client=client
            )
    return results
