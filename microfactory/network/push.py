"""Pushing the signed capacity report to the hubs in MICROFACTORY_NETWORK_HUBS.

The scheduler runs `push_due` every CHECK_S seconds (microfactory/scheduler.py; a database
lease makes one process do it). Each run builds the report's content and pushes to every hub
that is due:
- a hub never pushed to, or whose last accepted report had other content (a booking, a job,
  a machine, a material or the profile changed): at once, at most every MIN_INTERVAL_S
  (the debounce, so a burst of changes makes one push);
- every TTL/3 in any case, so that the hub's copy never expires while the shop is up;
- after a failure, with exponential backoff per hub (BACKOFF_BASE_S, doubling, capped at
  TTL/3), never sooner.
Nothing is pushed while the profile has no location (a hub refuses such a report with 400,
since it cannot route to it): each hub's status says NOT_READY instead, with no failure
counted, and the first run after an admin sets the location pushes at once.
One report (one sequence number) is signed per run and sent to every due hub. The status per
hub (last success, last error, next attempt) is stored for the admins' page and
`GET /api/v1/network/push-status`. Every request has a timeout; URLs are logged with any
user:password masked, and the report (public by design) is never logged.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory.config import Settings
from microfactory.db import utcnow
from microfactory.machines.schemas import mask_url
from microfactory.network import identity, report
from microfactory.network.models import PushStatus

log = logging.getLogger("microfactory.network.push")

CHECK_S = 5.0  # how often the scheduler looks for a change
MIN_INTERVAL_S = 10.0  # a change is pushed at most this often per hub
BACKOFF_BASE_S = 5.0  # the first retry after a failure; doubles with each failure
TIMEOUT_S = (5.0, 15.0)  # connect, read: every outbound request has both
REPORTS_PATH = "/api/v1/network/reports"
NOT_READY = "not pushed: set the shop's location in the network profile"


@dataclass(frozen=True)
class HubAnswer:
    """What a hub said to one push."""

    ok: bool
    status_code: int | None
    status: str | None  # accepted, pending
    sequence: int | None
    error: str | None


Poster = Callable[[str, str], HubAnswer]


def _detail(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200].strip() or resp.reason or ""
    detail = body.get("detail") if isinstance(body, dict) else None
    return str(detail)[:300] if detail is not None else str(body)[:200]


def post_report(hub_url: str, jws: str) -> HubAnswer:
    """POST a compact JWS to a hub (blocking: run it in a thread)."""
    try:
        resp = requests.post(
            hub_url + REPORTS_PATH,
            data=jws.encode("ascii"),
            headers={"Content-Type": "application/jose", "Accept": "application/json"},
            timeout=TIMEOUT_S,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        return HubAnswer(False, None, None, None, f"{type(exc).__name__}: cannot reach the hub")
    if resp.status_code == 202:
        try:
            body = resp.json()
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        sequence = body.get("sequence")
        return HubAnswer(
            True,
            202,
            str(body.get("status") or "accepted")[:16],
            sequence if isinstance(sequence, int) else None,
            None,
        )
    return HubAnswer(
        False, resp.status_code, None, None, f"HTTP {resp.status_code}: {_detail(resp)}"
    )


def backoff_s(failures: int, settings: Settings) -> float:
    """Return the wait before the next attempt after this many consecutive failures."""
    cap = max(settings.network_report_ttl_s / 3, BACKOFF_BASE_S)
    return float(min(BACKOFF_BASE_S * 2 ** max(failures - 1, 0), cap))


def change_fingerprint(content: dict[str, Any]) -> str:
    """Digest the content that makes a push worth it: free hours to the whole hour.

    Free hours shrink as the day goes by; to the hundredth they would change every 36 s.
    """
    coarse = copy.deepcopy(content)
    for row in coarse["live"]["freeHours"]:
        row["hours"] = round(row["hours"])
    for row in coarse["live"]["queue"]:
        row["waitHours"] = round(row["waitHours"])
    return report.fingerprint(coarse)


def is_due(row: PushStatus | None, fingerprint: str, now: dt.datetime, settings: Settings) -> bool:
    """Return whether a hub should get a report now."""
    if row is None or row.last_attempt_at is None:
        return True
    if row.failures > 0:  # backing off
        return row.next_attempt_at is None or now >= row.next_attempt_at
    if row.last_success_at is None:
        return True
    since = (now - row.last_success_at).total_seconds()
    if since >= settings.network_report_ttl_s / 3:
        return True
    return row.last_fingerprint != fingerprint and since >= MIN_INTERVAL_S


async def _record(
    session: AsyncSession,
    hub: str,
    answer: HubAnswer,
    *,
    now: dt.datetime,
    fingerprint: str,
    sequence: int,
    settings: Settings,
) -> PushStatus:
    row = await session.get(PushStatus, hub)
    if row is None:
        row = PushStatus(hub_url=hub, failures=0)
        session.add(row)
    row.last_attempt_at = now
    if answer.ok:
        if row.last_error == NOT_READY:  # not an error of this hub's: gone once pushed
            row.last_error = row.last_error_at = None
        row.last_success_at = now
        row.failures = 0
        row.last_status = answer.status
        row.last_sequence = answer.sequence if answer.sequence is not None else sequence
        row.last_fingerprint = fingerprint
        # The periodic refresh; a change is pushed sooner (after MIN_INTERVAL_S).
        row.next_attempt_at = now + dt.timedelta(seconds=settings.network_report_ttl_s / 3)
    else:
        row.failures = (row.failures or 0) + 1
        row.last_error = (answer.error or "failed")[:500]
        row.last_error_at = now
        row.next_attempt_at = now + dt.timedelta(seconds=backoff_s(row.failures, settings))
    await session.flush()
    return row


def has_location(content: dict[str, Any]) -> bool:
    """Return whether the report says where the shop is (hubs route by it, and need it)."""
    location = content["okw"].get("location")
    return isinstance(location, dict) and isinstance(location.get("gpsCoordinates"), dict)


async def _not_ready(
    sessionmaker: async_sessionmaker[AsyncSession],
    hubs: list[str],
    rows: dict[str, PushStatus],
    now: dt.datetime,
) -> None:
    """Note on each hub's status that nothing is pushed until the profile has a location."""
    waiting = [hub for hub in hubs if rows.get(hub) is None or rows[hub].last_error != NOT_READY]
    if not waiting:
        return  # noted already: no write every CHECK_S
    async with sessionmaker() as session, session.begin():
        for hub in waiting:
            row = await session.get(PushStatus, hub)
            if row is None:
                row = PushStatus(hub_url=hub, failures=0)
                session.add(row)
            row.last_error, row.last_error_at = NOT_READY, now
            row.next_attempt_at = None  # at once, when the location is set
    log.info("not pushing the report to %s hub(s): the profile has no location", len(waiting))


async def push_due(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    now: dt.datetime | None = None,
    post: Poster = post_report,
) -> dict[str, HubAnswer]:
    """Push a new signed report to every hub that is due; return each answer by hub URL."""
    hubs = settings.network_hubs
    if not hubs:
        return {}
    now = now or utcnow()
    shop = await asyncio.to_thread(identity.shop_key, settings.data_dir)
    async with sessionmaker() as session:
        content = await report.content(session=session, settings=settings, shop=shop, now=now)
        rows = {
            r.hub_url: r
            for r in (
                await session.execute(select(PushStatus).where(PushStatus.hub_url.in_(hubs)))
            ).scalars()
        }
    if not has_location(content):
        await _not_ready(sessionmaker, hubs, rows, now)
        return {}
    fingerprint = change_fingerprint(content)
    due = [hub for hub in hubs if is_due(rows.get(hub), fingerprint, now, settings)]
    if not due:
        return {}
    async with sessionmaker() as session, session.begin():
        sequence = await report.next_sequence(session=session, now=now)
    signed = report.sign(
        report.finish(content, sequence=sequence, now=now, ttl_s=settings.network_report_ttl_s),
        shop,
    )
    answers: dict[str, HubAnswer] = {}
    for hub in due:
        answer = await asyncio.to_thread(post, hub, signed)
        answers[hub] = answer
        async with sessionmaker() as session, session.begin():
            row = await _record(
                session,
                hub,
                answer,
                now=now,
                fingerprint=fingerprint,
                sequence=sequence,
                settings=settings,
            )
        if answer.ok:
            log.info("pushed report %s to %s: %s", sequence, mask_url(hub), answer.status)
        else:
            log.warning(
                "push of report %s to %s failed (%s); attempt %s, next in %.0f s",
                sequence,
                mask_url(hub),
                answer.error,
                row.failures,
                backoff_s(row.failures, settings),
            )
    return answers
