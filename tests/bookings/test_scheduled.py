"""Scheduled work called directly with `now`: no-shows, suspensions, reminders, usage, leases."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
from sqlalchemy import select

from microfactory.bookings import scheduled
from microfactory.bookings import service as booking_service
from microfactory.scheduler import NamedTask, run_tick, take_lease
from microfactory.usage import scheduled as usage_tasks
from microfactory.usage.models import UsageRecord
from tests.bookings.conftest import PARIS, Clock, book, paris
from tests.conftest import UserFactory


async def _run(app: Any, fn: Any, **kwargs: Any) -> Any:
    async with app.state.sessionmaker() as session, session.begin():
        return await fn(session=session, **kwargs)


async def test_no_show_is_released_and_the_slot_freed(
    app: Any,
    client: httpx.AsyncClient,
    clock: Clock,
    make_user: UserFactory,
    machine: dict[str, Any],
) -> None:
    _, alice = await make_user("member")
    _, bob = await make_user("member")
    start = paris(2026, 12, 1, 10)
    b = (await book(client, alice, machine["id"], start, paris(2026, 12, 1, 11))).json()
    # Within the grace period nothing happens.
    released = await _run(
        app, scheduled.release_no_shows, now=start + dt.timedelta(minutes=14), tz=PARIS
    )
    assert released == []
    released = await _run(
        app, scheduled.release_no_shows, now=start + dt.timedelta(minutes=16), tz=PARIS
    )
    assert [r.id for r in released] == [b["id"]]
    got = (await client.get(f"/api/v1/bookings/{b['id']}", headers=alice)).json()
    assert got["status"] == "no_show"
    assert got["released_at"] is not None
    notes = (await client.get("/api/v1/notifications", headers=alice)).json()
    assert notes[0]["kind"] == "no_show"
    # The rest of the slot is free for someone else.
    clock.now = start + dt.timedelta(minutes=16)
    rebook = await book(
        client, bob, machine["id"], paris(2026, 12, 1, 10, 30), paris(2026, 12, 1, 11)
    )
    assert rebook.status_code == 201, rebook.text
    # A checked-in booking is never released.
    c = (
        await book(client, alice, machine["id"], paris(2026, 12, 1, 12), paris(2026, 12, 1, 13))
    ).json()
    clock.now = paris(2026, 12, 1, 12, 5)
    await client.post(f"/api/v1/bookings/{c['id']}/check-in", headers=alice)
    again = await _run(app, scheduled.release_no_shows, now=paris(2026, 12, 1, 12, 30), tz=PARIS)
    assert [r.id for r in again] == [rebook.json()["id"]]  # Bob did not come either


async def test_repeated_no_shows_suspend_booking(
    app: Any,
    client: httpx.AsyncClient,
    clock: Clock,
    make_user: UserFactory,
    operator: dict[str, str],
    machine: dict[str, Any],
) -> None:
    await client.patch(
        "/api/v1/booking-policy",
        json={"noshow_limit": 2, "noshow_window_days": 30, "suspension_days": 7},
        headers=operator,
    )
    _, alice = await make_user("member")
    for hour in (10, 12):
        r = await book(
            client, alice, machine["id"], paris(2026, 12, 1, hour), paris(2026, 12, 1, hour + 1)
        )
        assert r.status_code == 201
    await _run(app, scheduled.release_no_shows, now=paris(2026, 12, 1, 10, 30), tz=PARIS)
    clock.now = paris(2026, 12, 1, 11)
    assert (
        await book(client, alice, machine["id"], paris(2026, 12, 2, 10), paris(2026, 12, 2, 11))
    ).status_code == 201
    await _run(app, scheduled.release_no_shows, now=paris(2026, 12, 1, 12, 30), tz=PARIS)
    clock.now = paris(2026, 12, 1, 13)
    refused = await book(
        client, alice, machine["id"], paris(2026, 12, 3, 10), paris(2026, 12, 3, 11)
    )
    assert refused.status_code == 403
    assert refused.json()["rule"] == "suspension"
    assert "2026-12-08" in refused.json()["detail"]
    suspensions = (await client.get("/api/v1/suspensions", headers=alice)).json()
    assert len(suspensions) == 1
    # After the suspension ends, booking works again.
    clock.now = paris(2026, 12, 8, 13, 15)
    ok = await book(client, alice, machine["id"], paris(2026, 12, 9, 10), paris(2026, 12, 9, 11))
    assert ok.status_code == 201, ok.text


async def test_reminders_are_queued_once(
    app: Any,
    client: httpx.AsyncClient,
    clock: Clock,
    member: dict[str, str],
    machine: dict[str, Any],
) -> None:
    await book(client, member, machine["id"], paris(2026, 12, 1, 10), paris(2026, 12, 1, 11))
    assert await _run(app, scheduled.send_reminders, now=paris(2026, 12, 1, 8, 30), tz=PARIS) == []
    due = await _run(app, scheduled.send_reminders, now=paris(2026, 12, 1, 9, 15), tz=PARIS)
    assert len(due) == 1
    assert await _run(app, scheduled.send_reminders, now=paris(2026, 12, 1, 9, 20), tz=PARIS) == []
    kinds = [n["kind"] for n in (await client.get("/api/v1/notifications", headers=member)).json()]
    assert kinds.count("reminder") == 1


async def test_a_checked_in_booking_is_logged_as_usage_with_an_energy_estimate(
    app: Any,
    client: httpx.AsyncClient,
    clock: Clock,
    member: dict[str, str],
    operator: dict[str, str],
    machine: dict[str, Any],
) -> None:
    await client.patch(
        f"/api/v1/machines/{machine['id']}/booking-profile", json={"power_w": 200}, headers=operator
    )
    b = (
        await book(client, member, machine["id"], paris(2026, 12, 1, 10), paris(2026, 12, 1, 11))
    ).json()
    clock.now = paris(2026, 12, 1, 10, 15)
    await client.post(f"/api/v1/bookings/{b['id']}/check-in", headers=member)
    assert await _run(app, usage_tasks.log_booked_sessions, now=paris(2026, 12, 1, 10, 59)) == []
    records = await _run(app, usage_tasks.log_booked_sessions, now=paris(2026, 12, 1, 11))
    assert len(records) == 1
    record = records[0]
    assert record.booking_id == b["id"]
    assert record.source == "booking"
    assert record.active_s == 45 * 60
    assert record.energy_wh == 150.0  # 200 W for 45 minutes
    assert await _run(app, usage_tasks.log_booked_sessions, now=paris(2026, 12, 1, 12)) == []
    got = (await client.get(f"/api/v1/bookings/{b['id']}", headers=member)).json()
    assert got["status"] == "completed"


async def test_check_in_by_job_and_conflicting_booking(
    app: Any,
    client: httpx.AsyncClient,
    clock: Clock,
    make_user: UserFactory,
    machine: dict[str, Any],
) -> None:
    alice, alice_h = await make_user("member")
    bob, _ = await make_user("member")
    b = (
        await book(client, alice_h, machine["id"], paris(2026, 12, 1, 10), paris(2026, 12, 1, 11))
    ).json()
    start, end = paris(2026, 12, 1, 10, 30), paris(2026, 12, 1, 12)

    async def conflict(user_id: int | None) -> Any:
        return await _run(
            app,
            booking_service.conflicting_booking,
            machine_id=machine["id"],
            start=start,
            end=end,
            user_id=user_id,
        )

    assert (await conflict(bob.id)).id == b["id"]
    assert await conflict(alice.id) is None  # her own booking is no conflict for her job
    assert (await conflict(None)).id == b["id"]

    too_early = await _run(
        app,
        booking_service.check_in_by_job,
        user_id=alice.id,
        machine_id=machine["id"],
        at=paris(2026, 12, 1, 9, 30),
    )
    assert too_early is None
    wrong_member = await _run(
        app,
        booking_service.check_in_by_job,
        user_id=bob.id,
        machine_id=machine["id"],
        at=paris(2026, 12, 1, 10, 5),
    )
    assert wrong_member is None
    checked = await _run(
        app,
        booking_service.check_in_by_job,
        user_id=alice.id,
        machine_id=machine["id"],
        at=paris(2026, 12, 1, 10, 5),
    )
    assert checked is not None
    assert checked.id == b["id"]
    assert checked.status.value == "checked_in"


async def test_the_lease_lets_one_process_run_the_tasks(app: Any, settings: Any) -> None:
    t0 = dt.datetime(2026, 12, 1, 7, 0, tzinfo=dt.UTC)
    ttl = dt.timedelta(seconds=90)
    async with app.state.sessionmaker() as s, s.begin():
        assert await take_lease(session=s, holder="web-1", now=t0, ttl=ttl)
    async with app.state.sessionmaker() as s, s.begin():
        assert not await take_lease(
            session=s, holder="web-2", now=t0 + dt.timedelta(seconds=30), ttl=ttl
        )
    async with app.state.sessionmaker() as s, s.begin():
        assert await take_lease(
            session=s, holder="web-1", now=t0 + dt.timedelta(seconds=60), ttl=ttl
        )
    # web-1 goes silent; after the expiry web-2 takes over, and web-1 is then refused.
    async with app.state.sessionmaker() as s, s.begin():
        assert await take_lease(
            session=s, holder="web-2", now=t0 + dt.timedelta(seconds=151), ttl=ttl
        )
    async with app.state.sessionmaker() as s, s.begin():
        assert not await take_lease(
            session=s, holder="web-1", now=t0 + dt.timedelta(seconds=160), ttl=ttl
        )

    calls: list[str] = []

    async def task(session: Any, now: dt.datetime, st: Any) -> None:
        calls.append("ran")

    tasks = [NamedTask("count", task)]
    later = t0 + dt.timedelta(seconds=170)
    ran = await run_tick(
        sessionmaker=app.state.sessionmaker,
        settings=settings,
        holder="web-1",
        now=later,
        tasks=tasks,
    )
    assert ran is None
    ran = await run_tick(
        sessionmaker=app.state.sessionmaker,
        settings=settings,
        holder="web-2",
        now=later,
        tasks=tasks,
    )
    assert ran == ["count"]
    assert calls == ["ran"]


async def test_default_tasks_run_in_one_tick(
    app: Any,
    settings: Any,
    client: httpx.AsyncClient,
    clock: Clock,
    member: dict[str, str],
    machine: dict[str, Any],
) -> None:
    b = (
        await book(client, member, machine["id"], paris(2026, 12, 1, 10), paris(2026, 12, 1, 11))
    ).json()
    ran = await run_tick(
        sessionmaker=app.state.sessionmaker,
        settings=settings,
        holder="solo",
        now=paris(2026, 12, 1, 10, 20).astimezone(dt.UTC),
    )
    assert ran == [
        "release_no_shows",
        "log_booked_sessions",
        "send_reminders",
        "deliver_email",
        "purge_job_files",
    ]
    got = (await client.get(f"/api/v1/bookings/{b['id']}", headers=member)).json()
    assert got["status"] == "no_show"
    async with app.state.sessionmaker() as s:
        assert (await s.execute(select(UsageRecord))).first() is None
