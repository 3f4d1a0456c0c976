"""A's first request to B goes through the outbox: tried at once, retried while B is away.

In process: the app under test is shop A; shop B is a second app with its own database,
served on a real port by uvicorn in this event loop, so A reaches it over HTTP as it would
reach another shop. B is down when A's member sends, then comes up.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from microfactory import migrate
from microfactory.accounts.models import Role
from microfactory.app import create_app
from microfactory.config import Settings
from microfactory.network import identity
from microfactory.network.requests import outbox
from microfactory.network.requests.models import FabricationRequest
from tests.conftest import UserFactory, _truncate
from tests.network.requests.test_requests_api import GCODE, _browser
from tests.peers.microfactory_server import free_port


@pytest.fixture(scope="module")
def b_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Shop B's settings: a database of its own (migrated once for the module)."""
    data_dir = tmp_path_factory.mktemp("shop-b")
    settings = Settings(
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'b.sqlite3'}",
        log_json=False,
        run_supervisors=False,
    )
    migrate.upgrade(settings)
    return settings


class ShopB:
    """Shop B on 127.0.0.1:port, started on demand."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.settings = settings
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.shop_id = identity.shop_key(settings.data_dir).shop_id
        self.app = create_app(settings)
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:  # uvicorn offers no event to wait on
            if self.task.done():
                self.task.result()  # raise why it did not start
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def shop_b(b_settings: Settings) -> AsyncIterator[ShopB]:
    _truncate(b_settings.database_url)  # each test's A is a new shop (a new key, same URL)
    b = ShopB(b_settings, free_port())
    try:
        yield b
    finally:
        await b.stop()


async def test_a_request_to_a_shop_that_is_down_is_sent_once_it_is_back(
    app: Any, client: httpx.AsyncClient, make_user: UserFactory, shop_b: ShopB
) -> None:
    now = dt.datetime.now(dt.UTC)  # B checks the request's times with its own (real) clock
    app.state.clock = lambda: now
    app.state.settings = app.state.settings.model_copy(update={"network_publish": True})
    _, member = await make_user(Role.MEMBER)
    design = await client.post(
        "/api/v1/designs",
        headers=member,
        data={"title": "Clip", "licence": "CC-BY-4.0", "visibility": "public"},
        files={"files": ("clip.gcode", GCODE, "text/x-gcode")},
    )
    assert design.status_code == 201, design.text
    body = {"shop_url": shop_b.url, "design_id": design.json()["id"],
            "due_date": "2026-12-20", "material": "PLA"}  # fmt: skip

    # Named by its URL alone, an unreachable shop cannot even be told apart: refused.
    alone = await client.post("/api/v1/network/requests/send", json=body, headers=member)
    assert alone.status_code == 422, alone.text
    assert "cannot read the keys" in alone.json()["detail"]

    # Named by routing (its id too), it gets the request once back: tried once, pending.
    sent = await client.post(
        "/api/v1/network/requests/send", json={**body, "shop_id": shop_b.shop_id}, headers=member
    )
    assert sent.status_code == 201, sent.text
    request_id = sent.json()["id"]
    assert sent.json()["state"] == "sent"
    (msg,) = sent.json()["messages"]
    assert (msg["kind"], msg["delivery_state"], msg["delivery_attempts"]) == (
        "request", "pending", 1,
    )  # fmt: skip
    assert "cannot reach" in msg["delivery"]
    async with await _browser(app, client, Role.OPERATOR) as web:
        page = await web.get(f"/network/requests/{request_id}")
    assert page.status_code == 200
    assert "Not delivered yet, retrying" in page.text

    # B comes up; the outbox's next attempt (due after the backoff) delivers it.
    await shop_b.start()
    await outbox.deliver_request(
        sessionmaker=app.state.sessionmaker,
        request_id=request_id,
        now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=outbox.backoff_s(1) + 1),
    )
    seen = (await client.get(f"/api/v1/network/requests/{request_id}", headers=member)).json()
    (msg,) = seen["messages"]
    assert (msg["delivery_state"], msg["delivery_attempts"]) == ("delivered", 2)
    assert msg["delivery"].startswith("HTTP 201")
    assert seen["state"] == "sent"  # taken; B has not answered yet
    async with shop_b.app.state.sessionmaker() as session:
        at_b = await session.get(FabricationRequest, request_id)
        assert at_b is not None
        assert (at_b.direction, at_b.state, at_b.design_title) == ("incoming", "received", "Clip")
    async with await _browser(app, client, Role.MEMBER) as web:
        page = await web.get(f"/network/requests/{request_id}")
    assert "Not delivered yet" not in page.text


async def test_a_request_the_other_shop_refuses_is_kept_as_undelivered(
    app: Any, client: httpx.AsyncClient, make_user: UserFactory, shop_b: ShopB, tmp_path: Path
) -> None:
    """B refuses for good what it reads and rejects (a 4xx): no retry, the request undelivered."""
    app.state.settings = app.state.settings.model_copy(update={"network_publish": True})
    _, member = await make_user(Role.MEMBER)
    design = await client.post(
        "/api/v1/designs",
        headers=member,
        data={"title": "Hook", "licence": "CC-BY-4.0", "visibility": "public"},
        files={"files": ("hook.gcode", GCODE, "text/x-gcode")},
    )
    assert design.status_code == 201, design.text
    await shop_b.start()
    body = {"shop_url": shop_b.url, "design_id": design.json()["id"], "due_date": "2026-12-20"}
    # Routing named another shop than the one at this URL: refused before anything is signed.
    elsewhere = identity.shop_key(tmp_path / "elsewhere").shop_id
    wrong = await client.post(
        "/api/v1/network/requests/send", json={**body, "shop_id": elsewhere}, headers=member
    )
    assert wrong.status_code == 422, wrong.text
    assert "publishes the key of shop" in wrong.json()["detail"]
    # A's clock two hours slow: B reads the request as expired and refuses it (422).
    app.state.clock = lambda: dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    refused = await client.post("/api/v1/network/requests/send", json=body, headers=member)
    assert refused.status_code == 422, refused.text
    assert "did not take the request" in refused.json()["detail"]
    assert "expired" in refused.json()["detail"]
    (kept,) = (await client.get("/api/v1/network/requests", headers=member)).json()
    assert kept["state"] == "undelivered"
    (msg,) = kept["messages"]
    assert (msg["delivery_state"], msg["delivery_attempts"]) == ("refused", 1)
