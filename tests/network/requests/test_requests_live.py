"""Request pages follow the live stream: a change of a request is a `request` event on it.

In process: the app's SSE stream is read as a browser reads it, for an operator, the member
the request was sent for, and another member (who is not told).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest

from microfactory.accounts.models import Role
from microfactory.config import Settings
from microfactory.network.requests.models import FabricationRequest
from tests.conftest import UserFactory
from tests.network.requests.test_requests_api import (
    HASH,
    JOSE,
    NOW,
    PEER_URL,
    _other_shop,
    _ours,
    _update,
)


class Stream:
    """One open `/api/v1/machines/stream`, its events queued as (kind, data)."""

    def __init__(self, app: Any, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = headers
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._closed = asyncio.Event()
        self._buffer = ""
        self._task: asyncio.Task[None] | None = None

    def open(self) -> None:
        raw = [(b"host", b"testserver")] + [
            (k.lower().encode(), v.encode()) for k, v in self.headers.items()
        ]
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": "/api/v1/machines/stream",
            "raw_path": b"/api/v1/machines/stream", "query_string": b"", "root_path": "",
            "headers": raw, "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
        }  # fmt: skip

        async def receive() -> dict[str, Any]:
            await self._closed.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] != "http.response.body":
                return
            self._buffer += message.get("body", b"").decode()
            while "\n\n" in self._buffer:
                block, self._buffer = self._buffer.split("\n\n", 1)
                fields = dict(
                    line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
                )
                if "event" in fields:
                    self.events.put_nowait((fields["event"], json.loads(fields["data"])))

        self._task = asyncio.create_task(self.app(scope, receive, send))

    async def next(self, kind: str) -> dict[str, Any]:
        """Return the data of the next event of this kind."""
        while True:
            got_kind, data = await asyncio.wait_for(self.events.get(), 20)
            if got_kind == kind:
                return data

    async def close(self) -> None:
        self._closed.set()
        if self._task is not None:
            await asyncio.wait_for(asyncio.gather(self._task, return_exceptions=True), 30)


async def _outgoing(app: Any, peer_shop_id: str, member_id: int) -> str:
    request_id = str(uuid.uuid4())
    async with app.state.sessionmaker() as session, session.begin():
        session.add(
            FabricationRequest(
                id=request_id, direction="outgoing", state="sent", peer_shop_id=peer_shop_id,
                peer_url=PEER_URL, design_hash=HASH, design_title="Bracket", parameters={},
                material="PLA", quantity=1, due_date="2026-12-10", requester="x",
                contact="maria@example.org", member_id=member_id, last_peer_sequence=0,
                created_at=NOW, updated_at=NOW, messages=[],
            )
        )  # fmt: skip
    return request_id


async def test_a_change_of_a_request_is_told_to_staff_and_its_member_on_the_stream(
    app: Any, client: httpx.AsyncClient, settings: Settings, make_user: UserFactory
) -> None:
    app.state.clock = lambda: NOW
    a, b = _ours(settings), _other_shop()
    maria, maria_headers = await make_user(Role.MEMBER)
    other, other_headers = await make_user(Role.MEMBER)
    _, operator = await make_user(Role.OPERATOR)
    request_id = await _outgoing(app, b.shop_id, maria.id)

    hub = app.state.fleet.hub
    before = len(hub._queues)
    streams = [Stream(app, h) for h in (operator, maria_headers, other_headers)]
    for s in streams:
        s.open()
    # Until each stream has subscribed (the hub tells no one: nothing to wait on but it).
    while len(hub._queues) < before + len(streams):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    staff_stream, maria_stream, other_stream = streams
    try:
        # B accepts: A takes the signed update, and after the commit the pages are told.
        accepted = _update(b, a.shop_id, request_id, "accepted", sequence=10)
        resp = await client.post(
            f"/api/v1/network/requests/{request_id}/updates", content=accepted, headers=JOSE
        )
        assert resp.status_code == 200, resp.text
        # Only the id: no requester, contact or design on the shared stream.
        assert await staff_stream.next("request") == {"id": request_id}
        assert await maria_stream.next("request") == {"id": request_id}
        # A refused update (a replay) changes nothing and says nothing.
        replay = await client.post(
            f"/api/v1/network/requests/{request_id}/updates", content=accepted, headers=JOSE
        )
        assert replay.status_code == 409
        # The other member hears of their own request only: the first event they get.
        theirs = await _outgoing(app, b.shop_id, other.id)
        assert await other_stream.next("request") == {"id": theirs}
        assert await staff_stream.next("request") == {"id": theirs}
        started = _update(b, a.shop_id, request_id, "started", sequence=11)
        resp = await client.post(
            f"/api/v1/network/requests/{request_id}/updates", content=started, headers=JOSE
        )
        assert resp.status_code == 200, resp.text
        assert await maria_stream.next("request") == {"id": request_id}
        assert maria_stream.events.empty()  # not told of the other member's request
    finally:
        for s in streams:
            await s.close()


async def test_a_change_of_a_request_reaches_the_streams_of_the_other_web_workers(
    app: Any, client: httpx.AsyncClient, settings: Settings, make_user: UserFactory
) -> None:
    from microfactory.app import create_app

    if not settings.is_postgresql:
        pytest.skip("several processes share PostgreSQL only (SQLite is one process)")
    app.state.clock = lambda: NOW
    a, b = _ours(settings), _other_shop()
    maria, _ = await make_user(Role.MEMBER)
    request_id = await _outgoing(app, b.shop_id, maria.id)
    other = create_app(settings)  # another web worker on the same database
    async with other.router.lifespan_context(other):
        updates = other.state.fleet.subscribe()

        async def next_request_event() -> tuple[str, int, dict[str, Any]]:
            while True:
                item = await anext(updates)
                if item[0] == "request":
                    return item  # type: ignore[no-any-return]

        pending = asyncio.ensure_future(asyncio.wait_for(next_request_event(), 10))
        await asyncio.sleep(0)  # the subscription starts with its first read
        accepted = _update(b, a.shop_id, request_id, "accepted", sequence=10)
        resp = await client.post(
            f"/api/v1/network/requests/{request_id}/updates", content=accepted, headers=JOSE
        )
        assert resp.status_code == 200, resp.text
        assert await pending == ("request", 0, {"id": request_id, "member_id": maria.id})
        await updates.aclose()
