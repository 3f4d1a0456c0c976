"""Booking fixtures: the shop in Paris, a fixed clock, a machine, helpers for local times."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from microfactory.config import Settings

PARIS = ZoneInfo("Europe/Paris")
# Tuesday 1 December 2026, 08:00 in Paris: every test runs at this instant unless it says.
NOW = dt.datetime(2026, 12, 1, 7, 0, tzinfo=dt.UTC)


def paris(y: int, m: int, d: int, h: int = 0, mi: int = 0) -> dt.datetime:
    """Return an aware datetime in Paris local time."""
    return dt.datetime(y, m, d, h, mi, tzinfo=PARIS)


def iso(moment: dt.datetime) -> str:
    """Return an ISO 8601 string with its offset."""
    return moment.isoformat()


class Clock:
    """A settable clock for the app (`app.state.clock`)."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        """Move the clock forward."""
        self.now += dt.timedelta(**delta)
        return self.now


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test settings, with the shop in Paris (daylight-saving changes matter)."""
    return settings.model_copy(update={"shop_timezone": "Europe/Paris"})


@pytest.fixture
def clock(app: Any) -> Clock:
    """The app's clock, fixed at NOW."""
    c = Clock(NOW)
    app.state.clock = c
    return c


@pytest.fixture
async def machine(client: httpx.AsyncClient, operator: dict[str, str]) -> dict[str, Any]:
    """A manual 3D printer."""
    resp = await client.post(
        "/api/v1/machines",
        json={"name": "Printer A", "kind": "fdm_printer", "driver": "manual"},
        headers=operator,
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def book(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    machine_id: int,
    start: dt.datetime,
    end: dt.datetime,
    **extra: Any,
) -> httpx.Response:
    """POST a booking."""
    body = {"machine_id": machine_id, "start": iso(start), "end": iso(end), **extra}
    return await client.post("/api/v1/bookings", json=body, headers=headers)


class BookingEvents:
    """The booking events on a fleet's live stream: `expect()` before a change, await after."""

    def __init__(self, fleet: Any) -> None:
        self._updates = fleet.subscribe()

    async def _next(self) -> tuple[str, int, dict[str, Any]]:
        while True:
            item = await anext(self._updates)
            if item[0] == "booking":
                return item  # type: ignore[no-any-return]

    async def expect(self) -> asyncio.Future[tuple[str, int, dict[str, Any]]]:
        """Start waiting (10 s at most) for the next booking event."""
        pending = asyncio.ensure_future(asyncio.wait_for(self._next(), 10))
        await asyncio.sleep(0)  # the subscription starts with its first read
        return pending

    async def close(self) -> None:
        await self._updates.aclose()
