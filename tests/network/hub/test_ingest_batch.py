"""Concurrent pushes are stored together (group commit), each still answered on its own."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import httpx
from sqlalchemy import select

from microfactory.errors import ConflictError, DomainError, InvalidInputError
from microfactory.network.hub import batch, service
from microfactory.network.hub.models import HubReport
from tests.network.hub.conftest import JOSE, Shop

Client = httpx.AsyncClient


async def push(client: Client, token: str) -> httpx.Response:
    return await client.post("/api/v1/network/reports", content=token, headers=JOSE)


async def stored(client: Client) -> list[str]:
    return [r["jws"] for r in (await client.get("/api/v1/network/reports")).json()["reports"]]


async def test_concurrent_pushes_from_several_shops_are_all_stored_as_received(
    client: Client, open_hub: Any
) -> None:
    shops = [Shop(f"Lab {n}") for n in range(6)]
    first = [s.jws() for s in shops]
    second = [s.jws() for s in shops]
    answers = await asyncio.gather(*(push(client, t) for t in first))
    answers += await asyncio.gather(*(push(client, t) for t in second))
    assert [a.status_code for a in answers] == [202] * 12, [a.text for a in answers]
    assert [a.json()["sequence"] for a in answers] == [1] * 6 + [2] * 6
    assert sorted(await stored(client)) == sorted(first + second)  # byte for byte
    listed = (await client.get("/api/v1/network/shops")).json()["shops"]
    assert sorted((s["name"], s["sequence"]) for s in listed) == [(f"Lab {n}", 2) for n in range(6)]


async def submit_together(app: Any, tokens: list[str], now: dt.datetime) -> list[Any]:
    """Queue checked reports at once (so they form one batch); return answers or errors."""
    settings = app.state.settings
    queue = batch.batcher(app)
    items = [service.check(t, settings=settings, now=now) for t in tokens]
    return await asyncio.gather(*(queue.submit(i) for i in items), return_exceptions=True)


async def test_one_batch_answers_each_report_replays_and_stale_ones_refused(
    app: Any, client: Client, open_hub: Any
) -> None:
    now = dt.datetime.now(dt.UTC)
    a, b, c = Shop("A"), Shop("B"), Shop("C")
    a1, b1 = a.jws(now=now), b.jws(now=now)
    expired = c.jws(issued=now - dt.timedelta(minutes=20), ttl_s=900)
    future = c.jws(issued=now + dt.timedelta(minutes=10))
    b2 = b.jws(now=now)
    outcomes = await submit_together(app, [a1, b1, a1, expired, b2, future, b1], now)

    def kind(o: Any) -> Any:
        if isinstance(o, DomainError):
            return (o.status_code, o.extra.get("reason"))
        return (o.status, o.sequence)

    assert [kind(o) for o in outcomes] == [
        ("accepted", 1),
        ("accepted", 1),
        (409, "replay"),  # the same report again, in the same batch
        (422, "expired"),
        ("accepted", 2),
        (422, "future"),
        (409, "replay"),  # older than b2, taken just before it in the batch
    ]
    assert isinstance(outcomes[2], ConflictError)
    assert isinstance(outcomes[3], InvalidInputError)
    assert batch.batcher(app).batches == 1  # one transaction for all seven
    assert sorted(await stored(client)) == sorted([a1, b1, b2])
    listed = (await client.get("/api/v1/network/shops")).json()["shops"]
    assert sorted((s["name"], s["sequence"]) for s in listed) == [("A", 1), ("B", 2)]


async def test_a_report_that_fails_its_batch_does_not_cost_the_others(
    app: Any, client: Client, open_hub: Any
) -> None:
    now = dt.datetime.now(dt.UTC)
    a, b = Shop("A"), Shop("B")
    assert (await push(client, b.jws(now=now))).status_code == 202
    # A row the database holds but the pin does not know (sequence 2 taken, pin says 1): the
    # batch's INSERT of b's sequence 2 violates the unique (shop, sequence) and fails the
    # whole transaction, as a race with another hub process would.
    async with app.state.sessionmaker() as session, session.begin():
        held = (await session.execute(select(HubReport))).scalar_one()
        session.add(
            HubReport(
                shop_id=b.shop_id,
                sequence=2,
                jws="held elsewhere",
                issued_at=held.issued_at,
                expires_at=held.expires_at,
                received_at=now,
            )
        )
    a1, b2, a2 = a.jws(now=now), b.jws(now=now), a.jws(now=now)
    outcomes = await submit_together(app, [a1, b2, a2], now)
    assert [getattr(o, "status", None) for o in outcomes] == ["accepted", None, "accepted"]
    assert isinstance(outcomes[1], ConflictError)
    assert outcomes[1].status_code == 409
    assert batch.batcher(app).fallbacks == 1  # taken again one by one
    assert set(await stored(client)) >= {a1, a2}
    listed = (await client.get("/api/v1/network/shops")).json()["shops"]
    assert ("A", 2) in [(s["name"], s["sequence"]) for s in listed]


async def test_without_group_commit_each_push_is_its_own_transaction(
    app: Any, client: Client, open_hub: Any
) -> None:
    app.state.settings = app.state.settings.model_copy(update={"hub_ingest_batch": False})
    shop = Shop()
    token = shop.jws()
    assert (await push(client, token)).status_code == 202
    again = await push(client, token)
    assert again.status_code == 409
    assert "replay" in again.json()["detail"]
    assert await stored(client) == [token]
    assert getattr(app.state, "hub_ingest_batcher", None) is None
