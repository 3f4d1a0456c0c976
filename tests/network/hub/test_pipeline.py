"""Mirror pages checked in a worker process while the page before is stored (pipeline.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select, text

from microfactory.errors import DomainError
from microfactory.network.hub import pipeline, service
from microfactory.network.hub.models import HubOffer, HubReport
from tests.network.hub.conftest import Shop, tamper


def pages_for(shop: Shop, other: Shop, now: dt.datetime) -> list[list[str]]:
    """Three pages: good reports, a forged one, replays, an expired one, one not a JWS."""
    s1, s2, s3 = (shop.jws(now=now) for _ in range(3))
    forged = tamper(s2, lambda d: d["okw"].update(name="Forged"))
    expired = shop.jws(issued=now - dt.timedelta(minutes=20), ttl_s=900)
    return [
        [s1, forged, s2, other.jws(now=now)],
        [s1, s3, expired],
        [s2, "not a JWS", other.jws(now=now)],
    ]


def summary(outcome: service.IngestResult | DomainError) -> tuple[Any, ...]:
    if isinstance(outcome, DomainError):
        return (type(outcome).__name__, outcome.status_code, outcome.extra.get("reason"))
    return ("result", outcome.status, outcome.sequence)


async def test_pipelined_pages_answer_as_page_by_page_and_store_reports_as_received(
    app: Any, open_hub: Any
) -> None:
    settings = app.state.settings.model_copy(update={"hub_check_workers": 1})
    sessions = app.state.sessionmaker
    now = dt.datetime.now(dt.UTC)
    # The same sequence of tokens from two pairs of shops: page by page in the server, and
    # through the pipeline with a worker process; every answer must be the same.
    direct_pages = pages_for(Shop("Direct"), Shop("Direct 2"), now)
    piped_pages = pages_for(Shop("Piped"), Shop("Piped 2"), now)
    direct = []
    for page in direct_pages:
        async with sessions() as session, session.begin():
            direct += await service.ingest_many(
                session=session, tokens=page, settings=settings, now=now, source="u"
            )
    ingest = pipeline.PageIngest(sessions, settings, source="u", now=now)
    piped = []
    for page in piped_pages:
        piped += await ingest.feed(page) or []
    piped += await ingest.finish() or []

    assert [summary(o) for o in piped] == [summary(o) for o in direct]
    kinds = [summary(o)[:2] for o in piped]
    assert kinds[1] == ("NotAuthenticatedError", 401)  # the forged report
    assert kinds[6][1] == 422  # the expired one
    assert summary(piped[4])[0] == "ConflictError"  # s1 again, after s2
    assert piped[4].extra.get("reason") == "replay"  # type: ignore[union-attr]

    async with sessions() as session:
        stored = (await session.execute(select(HubReport.jws))).scalars().all()
        offers = (await session.execute(select(HubOffer.shop_name))).scalars().all()
    accepted = [
        t
        for page, outcomes in zip(piped_pages, (piped[0:4], piped[4:7], piped[7:10]), strict=True)
        for t, o in zip(page, outcomes, strict=True)
        if isinstance(o, service.IngestResult) and o.status == "accepted"
    ]
    assert accepted
    assert set(accepted) <= set(stored)  # byte for byte, as received
    assert {"Piped", "Piped 2"} <= set(offers)  # indexed from the rows the worker built


async def test_a_page_checked_in_the_server_when_no_worker_is_set(app: Any, open_hub: Any) -> None:
    settings = app.state.settings.model_copy(update={"hub_check_workers": 0})
    now = dt.datetime.now(dt.UTC)
    shop = Shop("Inline")
    ingest = pipeline.PageIngest(app.state.sessionmaker, settings, source="u", now=now)
    assert await ingest.feed([shop.jws(now=now), "garbage"]) is None
    first = await ingest.finish()
    assert first is not None
    assert [summary(o)[0] for o in first] == ["result", "BadRequestError"]


async def test_reports_are_compressed_with_lz4_on_postgresql(app: Any, db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("TOAST compression is PostgreSQL's")
    async with app.state.sessionmaker() as session:
        lz4 = (
            await session.execute(
                text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
            )
        ).scalar()
        if "lz4" not in (lz4 or []):
            pytest.skip("this PostgreSQL was built without lz4")
        got = (
            await session.execute(
                text(
                    "SELECT attcompression FROM pg_attribute "
                    "WHERE attrelid = 'hub_reports'::regclass AND attname = 'jws'"
                )
            )
        ).scalar()
    assert got == "l"
