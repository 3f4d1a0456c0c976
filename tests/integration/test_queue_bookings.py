"""The matcher and bookings together: a queued job never runs into another member's booking,
and starting a job on your own booked machine checks you in."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from microfactory.jobs import queue
from tests.bookings.conftest import Clock, book
from tests.conftest import UserFactory
from tests.integration.conftest import dispatch, job_json, machine_state, wait_for

pytestmark = pytest.mark.timeout(120)

NOW = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
PROGRAM = b"G21\nG90\nG1 F600\nG1 X10\nG1 Y10\nG1 X0\nG1 Y0\n"


async def _setup(client: httpx.AsyncClient, operator: dict[str, str]) -> dict[str, Any]:
    mill = (
        await client.post(
            "/api/v1/machines",
            json={
                "name": "Mill",
                "kind": "cnc_mill",
                "driver": "sim-grbl",
                "connection": {"speed_factor": 100},
            },
            headers=operator,
        )
    ).json()
    await wait_for(lambda: _idle(client, operator, mill["id"]))
    return dict(mill)


async def _idle(client: httpx.AsyncClient, headers: dict[str, str], machine_id: int) -> bool:
    return await machine_state(client, headers, machine_id) == "idle"


async def _queued_job(
    client: httpx.AsyncClient, headers: dict[str, str], mill: dict[str, Any]
) -> Any:
    resp = await client.post(
        "/api/v1/jobs",
        files={"file": ("p.nc", PROGRAM, "text/plain")},
        data={"machine_kind": "cnc_mill"},
        headers=headers,
    )
    assert resp.status_code == 201, resp.text
    return resp.json()


async def _plan(app: Any, now: dt.datetime) -> list[tuple[int, int]]:
    # The simulated mill's link can drop on a loaded machine (the driver reconnects by
    # itself): the decision under test is about bookings, so it is taken with the mill up.
    await wait_for(
        lambda: all(s.get("state") == "idle" for s in app.state.fleet.snapshots().values()),
        what="every machine idle before planning",
    )
    async with app.state.sessionmaker() as session:
        pairs = await queue.plan(
            session=session, fleet=app.state.fleet, settings=app.state.settings, now=now
        )
        await session.rollback()  # look, don't touch: the decision is what we test
        return pairs


async def test_a_job_never_starts_into_another_members_booking(
    live_app: Any, live_client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    live_app.state.clock = Clock(NOW)
    _, operator = await make_user("operator")
    _, alice = await make_user("member")
    _, bob = await make_user("member")
    mill = await _setup(live_client, operator)
    booked = await book(
        live_client, alice, mill["id"], NOW + dt.timedelta(minutes=30), NOW + dt.timedelta(hours=2)
    )
    assert booked.status_code == 201, booked.text
    job = await _queued_job(live_client, operator, mill)  # an operator's job: queued at once
    # The job is estimated at a few seconds; it fits before Alice's booking...
    assert await _plan(live_app, NOW) == [(job["id"], mill["id"])]
    # ...but not if it would start ten minutes before it, with an hour-long estimate.
    async with live_app.state.sessionmaker() as session, session.begin():
        from microfactory.jobs.models import Job

        row = await session.get(Job, job["id"])
        assert row is not None
        row.analysis = {**row.analysis, "estimated_time_s": 3600.0}
    assert await _plan(live_app, NOW + dt.timedelta(minutes=20)) == []
    waiting = await job_json(live_client, operator, job["id"])
    assert waiting["state"] == "queued"
    # Bob's own booking is no obstacle for Bob.
    _ = bob


async def test_starting_a_job_on_your_booked_machine_checks_you_in(
    live_app: Any, live_client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    _, operator = await make_user("operator")
    member_user, member = await make_user("member")
    mill = await _setup(live_client, operator)
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    start = now - dt.timedelta(minutes=now.minute % 15)  # the current 15-minute slot
    live_app.state.clock = Clock(start - dt.timedelta(minutes=1))
    booked = await book(live_client, member, mill["id"], start, start + dt.timedelta(hours=1))
    assert booked.status_code == 201, booked.text
    live_app.state.clock = None
    job = await _queued_job(live_client, member, mill)
    await live_client.post(f"/api/v1/jobs/{job['id']}/approve", headers=operator)
    resp = await dispatch(live_client, operator, job["id"], mill["id"])
    assert resp.status_code == 200, resp.text
    await live_app.state.events.drain()  # check-in reacts to job.started after its commit
    got = (await live_client.get(f"/api/v1/bookings/{booked.json()['id']}", headers=member)).json()
    assert got["status"] == "checked_in"
    _ = member_user


async def test_your_own_booking_is_no_obstacle_but_the_next_members_is(
    live_app: Any, live_client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    live_app.state.clock = Clock(NOW)
    _, operator = await make_user("operator")
    _, alice = await make_user("member")
    _, bob = await make_user("member")
    mill = await _setup(live_client, operator)
    mine = await book(
        live_client, alice, mill["id"], NOW + dt.timedelta(minutes=15), NOW + dt.timedelta(hours=1)
    )
    theirs = await book(
        live_client, bob, mill["id"], NOW + dt.timedelta(hours=2), NOW + dt.timedelta(hours=3)
    )
    assert mine.status_code == theirs.status_code == 201
    job = await _queued_job(live_client, alice, mill)
    await live_client.post(f"/api/v1/jobs/{job['id']}/approve", headers=operator)

    async def with_estimate(seconds: float) -> list[tuple[int, int]]:
        async with live_app.state.sessionmaker() as session, session.begin():
            from microfactory.jobs.models import Job

            row = await session.get(Job, job["id"])
            assert row is not None
            row.analysis = {**row.analysis, "estimated_time_s": seconds}
        return await _plan(live_app, NOW)

    # Ninety minutes: runs into Alice's own booking (fine), ends before Bob's.
    assert await with_estimate(90 * 60) == [(job["id"], mill["id"])]
    # Three hours: would run into Bob's booking.
    assert await with_estimate(3 * 3600) == []
