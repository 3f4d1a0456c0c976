"""Recorded maintenance reaches the live stream after its commit (the machine page's log)."""

from __future__ import annotations

from typing import Any

import httpx

from microfactory.accounts import service as account_service
from microfactory.accounts.models import Role
from microfactory.accounts.schemas import UserCreate
from microfactory.bookings import live
from microfactory.bookings import service as booking_service
from microfactory.bookings.schemas import MaintenanceCreate
from tests.bookings.conftest import PARIS, BookingEvents, Clock, iso, paris


async def test_maintenance_recorded_through_the_api_is_announced_for_its_machine(
    app: Any,
    client: httpx.AsyncClient,
    clock: Clock,
    machine: dict[str, Any],
    operator: dict[str, str],
) -> None:
    stream = BookingEvents(app.state.fleet)
    pending = await stream.expect()
    block = {
        "machine_id": machine["id"],
        "start": iso(paris(2026, 12, 3, 9)),
        "end": iso(paris(2026, 12, 3, 12)),
        "reason": "new hotend",
    }
    resp = await client.post("/api/v1/maintenance-blocks", json=block, headers=operator)
    assert resp.status_code == 201, resp.text
    # Only the machine's id: the open machine page refetches its log, the calendar its events.
    assert await pending == ("booking", machine["id"], {})
    pending = await stream.expect()
    removed = await client.delete(
        f"/api/v1/maintenance-blocks/{resp.json()['id']}", headers=operator
    )
    assert removed.status_code == 200, removed.text
    assert await pending == ("booking", machine["id"], {})
    await stream.close()


async def test_maintenance_is_published_after_its_commit_and_never_when_rolled_back(
    app: Any, clock: Clock, machine: dict[str, Any]
) -> None:
    async with app.state.sessionmaker() as session:
        operator = await account_service.create(
            session=session,
            user_in=UserCreate(username="fixer", password="pass-word-1", role=Role.OPERATOR),
        )
        await session.commit()
    published: list[int] = []

    async def record(reason: str) -> Any:
        session = app.state.sessionmaker()
        session.info[live.PUBLISHER_KEY] = published.append  # the app's publisher, observed
        block_in = MaintenanceCreate(
            machine_id=machine["id"],
            start=paris(2026, 12, 4, 9),
            end=paris(2026, 12, 4, 10),
            reason=reason,
        )
        await booking_service.create_maintenance(
            session=session, block_in=block_in, operator=operator, tz=PARIS
        )
        return session

    session = await record("belts")
    assert published == []  # flushed, not committed: a page refetching now would not see it
    await session.commit()
    assert published == [machine["id"]]
    await session.close()

    session = await record("never happened")
    await session.rollback()
    await session.close()
    assert published == [machine["id"]]  # nothing for the rolled-back block
