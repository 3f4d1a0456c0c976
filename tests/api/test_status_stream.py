"""The live-status stream keeps going across keep-alives (it used to end in a 500)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from microfactory.accounts.models import Role
from microfactory.machines import routes
from microfactory.runtime.fleet import Fleet


class _Browser:
    """Just enough of a request: the app's fleet, and a client that leaves after a while."""

    def __init__(self, fleet: Fleet, stays_for: int) -> None:
        self.app = SimpleNamespace(state=SimpleNamespace(fleet=fleet, sessionmaker=None))
        self.checks = stays_for

    async def is_disconnected(self) -> bool:
        self.checks -= 1
        return self.checks < 0


async def test_stream_sends_keep_alives_then_updates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes, "KEEPALIVE_S", 0.01)
    fleet = Fleet()
    browser: Any = _Browser(fleet, stays_for=5)
    operator: Any = SimpleNamespace(id=1, role=Role.OPERATOR)
    response = await routes.stream_status(browser, user=operator)
    chunks = []
    async for chunk in response.body_iterator:
        chunks.append(chunk.encode() if isinstance(chunk, str) else bytes(chunk))
        if len(chunks) == 3:
            # After two keep-alives, an update still arrives: the subscription is alive.
            fleet.publish_status(7, {"state": "idle"})
    assert chunks[:3] == [b": keep-alive\n\n"] * 3
    assert b'event: machine\ndata: {"id": 7, "status": {"state": "idle"}}\n\n' in chunks
