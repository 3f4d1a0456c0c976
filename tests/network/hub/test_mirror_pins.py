"""Mirroring in process: a closed mirror keeps an upstream's new shops pending, and continues
from its cursor. The upstream is a second app with its own SQLite database, reached through
httpx's ASGI transport (the two-process test is test_mirror.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from microfactory import migrate
from microfactory.app import create_app
from microfactory.config import Settings
from microfactory.network.hub import mirror
from tests.network.hub.conftest import JOSE, Shop

UPSTREAM = "http://upstream"


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[Any]:
    url = f"sqlite:///{tmp_path / 'upstream.sqlite3'}"
    settings = Settings(
        data_dir=tmp_path / "upstream",
        database_url=url,
        log_json=False,
        run_supervisors=False,
        hub=True,
        hub_open=True,
        network_publish=True,
    )
    migrate.upgrade(settings)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


async def test_a_closed_mirror_keeps_new_shops_pending_and_follows_the_cursor(
    app: Any, client: httpx.AsyncClient, upstream: Any, admin: dict[str, str]
) -> None:
    transport = httpx.ASGITransport(app=upstream)
    async with httpx.AsyncClient(transport=transport, base_url=UPSTREAM) as up:
        shop = Shop("Far away lab")
        assert (
            await up.post("/api/v1/network/reports", content=shop.jws(), headers=JOSE)
        ).status_code == 202

        async def pull() -> dict[str, int]:
            return await mirror.pull_one(
                sessionmaker=app.state.sessionmaker,
                settings=app.state.settings,
                url=UPSTREAM,
                client=up,
            )

        assert await pull() == {"stored": 1, "stale": 0, "refused": 0}
        # "stored" here means taken: the shop is unknown to this closed hub, so it waits.
        assert (await client.get("/api/v1/network/shops")).json()["shops"] == []
        pins = (await client.get("/api/v1/network/hub/pins", headers=admin)).json()
        assert [(p["shop_id"], p["status"]) for p in pins] == [(shop.shop_id, "pending")]

        # Nothing new upstream: the cursor moved on, nothing is taken twice.
        assert await pull() == {"stored": 0, "stale": 0, "refused": 0}

        approved = await client.post(
            f"/api/v1/network/hub/pins/{shop.shop_id}/approve", headers=admin
        )
        assert approved.status_code == 200
        assert [s["name"] for s in (await client.get("/api/v1/network/shops")).json()["shops"]] == [
            "Far away lab"
        ]

        shop.name = "Far away lab, renamed"
        assert (
            await up.post("/api/v1/network/reports", content=shop.jws(), headers=JOSE)
        ).status_code == 202
        assert await pull() == {"stored": 1, "stale": 0, "refused": 0}
        names = [s["name"] for s in (await client.get("/api/v1/network/shops")).json()["shops"]]
        assert names == ["Far away lab, renamed"]
        ups = (await client.get("/api/v1/network/hub/upstreams", headers=admin)).json()
        assert [(u["url"], u["stored"], u["refused"], u["last_error"]) for u in ups] == [
            (UPSTREAM, 2, 0, None)
        ]
