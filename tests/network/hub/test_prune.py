"""The hub forgets reports nobody needs: superseded, expired a week ago, of revoked shops.

Through the scheduler's tick, as a running hub does it, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from microfactory.network.hub import prune, service
from microfactory.network.hub.models import HubReport
from microfactory.scheduler import run_tick
from tests.network.hub.conftest import JOSE, Shop

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture(autouse=True)
def _now_is_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """NOW is taken when each test starts, not at import: a long suite would otherwise hand
    the hub reports that expired while earlier tests ran."""
    monkeypatch.setitem(globals(), "NOW", dt.datetime.now(dt.UTC).replace(microsecond=0))


async def _take(app: Any, token: str, now: dt.datetime) -> int:
    async with app.state.sessionmaker() as session, session.begin():
        result = await service.ingest(
            session=session, token=token, settings=app.state.settings, now=now
        )
    assert result.cursor is not None
    return result.cursor


async def _stored(app: Any) -> list[tuple[str, int]]:
    async with app.state.sessionmaker() as session:
        rows = await session.execute(
            select(HubReport.shop_id, HubReport.sequence).order_by(HubReport.cursor)
        )
        return [(s, q) for s, q in rows.all()]


async def test_the_scheduler_prunes_superseded_long_expired_and_revoked_reports(
    open_hub: Any, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    app = open_hub
    gone, revoked, busy = Shop("Closed down"), Shop("Revoked"), Shop("Busy")
    old = NOW - dt.timedelta(days=8)
    await _take(app, gone.jws(now=old), old)  # taken then, expired 15 min later
    await _take(app, revoked.jws(now=NOW), NOW)
    resp = await client.post(f"/api/v1/network/hub/pins/{revoked.shop_id}/revoke", headers=admin)
    assert resp.status_code == 200, resp.text
    for _ in range(3):
        top = await _take(app, busy.jws(now=NOW), NOW)
    assert len(await _stored(app)) == 5

    ran = await run_tick(
        sessionmaker=app.state.sessionmaker,
        settings=app.state.settings,
        holder="test",
        now=NOW + dt.timedelta(minutes=1),
    )
    assert ran is not None
    assert "prune_hub_reports" in ran
    assert await _stored(app) == [(busy.shop_id, 3)]  # the newest of the one live shop

    # The shop list forgot the shop gone a week; its pin remembers its last sequence.
    shops = (await client.get("/api/v1/network/shops")).json()["shops"]
    assert [s["name"] for s in shops] == ["Busy"]
    again = gone.jws(now=NOW, sequence=1)  # fresh, but the sequence was taken before
    resp = await client.post("/api/v1/network/reports", content=again, headers=JOSE)
    assert resp.status_code == 409, resp.text
    # A mirroring hub reading on from an old cursor gets the newest report, and the next
    # report stored gets a cursor after every one it has seen.
    page = (await client.get("/api/v1/network/reports", params={"since": 1})).json()
    assert [r["cursor"] for r in page["reports"]] == [top]
    assert await _take(app, busy.jws(now=NOW), NOW) >= page["next"]


async def test_the_newest_report_is_kept_even_when_long_expired(open_hub: Any) -> None:
    app = open_hub
    shop = Shop("Quiet hub's only shop")
    old = NOW - dt.timedelta(days=30)
    await _take(app, shop.jws(now=old), old)
    await _take(app, shop.jws(now=old), old)
    async with app.state.sessionmaker() as session, session.begin():
        pruned = await prune.prune_reports(session=session, now=NOW)
    assert (pruned.superseded, pruned.expired, pruned.shops_forgotten) == (1, 0, 1)
    # The top cursor stays (SQLite would hand it out again), though nothing lists the shop.
    assert await _stored(app) == [(shop.shop_id, 2)]
