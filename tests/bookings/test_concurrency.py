"""Conflicts are impossible under concurrency: 50 racing requests, exactly one booking."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import httpx

from tests.bookings.conftest import Clock, book, paris
from tests.conftest import UserFactory


async def test_fifty_concurrent_overlapping_requests_yield_one_booking(
    client: httpx.AsyncClient, clock: Clock, make_user: UserFactory, machine: dict[str, Any]
) -> None:
    members = [(await make_user("member"))[1] for _ in range(5)]
    for headers in members:
        # Use each token once first: its first use writes last_used_at, and that early write
        # would serialise the racing requests by accident and hide a missing lock.
        assert (await client.get("/api/v1/users/me", headers=headers)).status_code == 200
    base = paris(2026, 12, 2, 10)
    # Fifty different but overlapping windows, so no two requests are identical.
    requests = [
        book(
            client,
            members[i % len(members)],
            machine["id"],
            base + dt.timedelta(minutes=15 * (i % 4)),
            base + dt.timedelta(minutes=60 + 15 * (i % 3)),
        )
        for i in range(50)
    ]
    responses = await asyncio.gather(*requests)
    codes = sorted(r.status_code for r in responses)
    assert codes.count(201) == 1, codes
    assert codes.count(409) == 49, [r.text for r in responses if r.status_code not in (201, 409)]
    listed = await client.get(
        "/api/v1/bookings", params={"machine_id": machine["id"]}, headers=members[0]
    )
    everyone = [
        b for m in members for b in (await client.get("/api/v1/bookings", headers=m)).json()
    ]
    assert len(everyone) == 1
    assert listed.status_code == 200


async def test_the_database_itself_refuses_an_overlap(
    app: Any, clock: Clock, make_user: UserFactory, machine: dict[str, Any]
) -> None:
    """The last line of defence holds even for code that skips the service's check."""
    import pytest
    from sqlalchemy.exc import IntegrityError

    from microfactory.bookings.models import Booking, BookingStatus

    user, _ = await make_user("member")
    start = paris(2026, 12, 2, 10).astimezone(dt.UTC)
    async with app.state.sessionmaker() as session:
        session.add(
            Booking(
                machine_id=machine["id"],
                user_id=user.id,
                start_at=start,
                end_at=start + dt.timedelta(hours=1),
                occupied_until=start + dt.timedelta(hours=1, minutes=15),
                status=BookingStatus.BOOKED,
            )
        )
        await session.commit()
        session.add(
            Booking(
                machine_id=machine["id"],
                user_id=user.id,
                start_at=start + dt.timedelta(hours=1),  # inside the first one's buffer
                end_at=start + dt.timedelta(hours=2),
                occupied_until=start + dt.timedelta(hours=2),
                status=BookingStatus.BOOKED,
            )
        )
        with pytest.raises(IntegrityError):
            await session.commit()
        await session.rollback()
        # A cancelled booking does not hold the time.
        session.add(
            Booking(
                machine_id=machine["id"],
                user_id=user.id,
                start_at=start,
                end_at=start + dt.timedelta(hours=1),
                occupied_until=start + dt.timedelta(hours=1),
                status=BookingStatus.CANCELLED,
            )
        )
        await session.commit()


def _migration_0003b() -> Any:
    import importlib.util
    from pathlib import Path

    path = next(Path("migrations/versions").glob("*-0003b_*.py"))
    spec = importlib.util.spec_from_file_location("migration_0003b", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_sqlite_lock_alone_serialises_the_check(
    app: Any,
    db_url: str,
    client: httpx.AsyncClient,
    clock: Clock,
    make_user: UserFactory,
    machine: dict[str, Any],
) -> None:
    """Without the trigger, the write lock before the check still allows one booking (SQLite)."""
    import pytest
    from sqlalchemy import text

    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL relies on its exclusion constraint")
    migration = _migration_0003b()
    async with app.state.engine.begin() as conn:
        await conn.execute(text("DROP TRIGGER tr_bookings_no_overlap_insert"))
    try:
        await test_fifty_concurrent_overlapping_requests_yield_one_booking(
            client, clock, make_user, machine
        )
    finally:
        async with app.state.engine.begin() as conn:
            await conn.execute(
                text(
                    migration.SQLITE_TRIGGER.format(
                        op="insert", event="INSERT", holding=migration.HOLDING
                    )
                )
            )
