"""A member hears about their job (approved, started, finished) and sees an unread badge."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from microfactory.db import utcnow
from microfactory.events import JobChanged
from microfactory.jobs import lifecycle
from microfactory.jobs.models import Job, JobState
from microfactory.notifications.models import Notification
from tests.api.test_jobs import make_machine, upload
from tests.conftest import UserFactory
from tests.designs.test_design_pages import browser_login


async def _messages(client: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    resp = await client.get("/api/v1/notifications", headers=headers)
    assert resp.status_code == 200, resp.text
    return list(resp.json())


async def _wait_for(client: httpx.AsyncClient, headers: dict[str, str], kind: str) -> None:
    # Subscribers run after the commit, on the event loop: give them their turn.
    for _ in range(100):
        if any(m["kind"] == kind for m in await _messages(client, headers)):
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"no {kind} message")


async def test_approved_and_started_jobs_are_messages_with_an_unread_badge(
    app: Any, client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    _, staff = await make_user("operator", username="msg-operator")
    _, member = await make_user("member", username="msg-member")
    printer = await make_machine(client, staff, name="Messages printer")
    job = (await upload(client, member, title="Clip")).json()
    assert (
        await client.post(f"/api/v1/jobs/{job['id']}/approve", headers=staff)
    ).status_code == 200
    await _wait_for(client, member, "job_approved")
    async with app.state.sessionmaker() as session, session.begin():
        await lifecycle.assign(
            session=session, job=job["id"], machine_id=printer["id"], actor=lifecycle.SYSTEM
        )
        await lifecycle.start(session=session, job=job["id"], at=utcnow())
    await _wait_for(client, member, "job_started")
    subjects = [m["subject"] for m in await _messages(client, member)]
    assert "Your job 'Clip' was approved" in subjects
    assert "Your job 'Clip' started" in subjects

    await browser_login(client, "msg-member")
    page = (await client.get("/machines")).text
    assert 'aria-label="2 unread messages">2</span>' in page
    inbox = (await client.get("/notifications")).text
    assert inbox.count('<span class="badge">new</span>') == 2
    assert "Your job &#39;Clip&#39; started" in inbox
    after = (await client.get("/machines")).text
    assert 'aria-label="0 unread messages" hidden>0</span>' in after  # opening Messages read them
    assert all(m["read_at"] for m in await _messages(client, member))


async def test_own_approval_is_no_message_and_the_api_marks_messages_read(
    app: Any, client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    _, staff = await make_user("operator", username="self-operator")
    await make_machine(client, staff, name="Self printer")
    await upload(client, staff)  # operators' jobs are approved at once, by themselves
    await asyncio.sleep(0.1)
    assert [m for m in await _messages(client, staff) if m["kind"] == "job_approved"] == []

    _, member = await make_user("member", username="api-reader")
    job = (await upload(client, member)).json()
    await client.post(f"/api/v1/jobs/{job['id']}/approve", headers=staff)
    await _wait_for(client, member, "job_approved")
    marked = await client.post("/api/v1/notifications/read", headers=member)
    assert marked.status_code == 200, marked.text
    assert marked.json() == {"marked": 1}
    again = await client.post("/api/v1/notifications/read", headers=member)
    assert again.json() == {"marked": 0}


async def _kinds(app: Any, user_id: int) -> list[tuple[str, str]]:
    async with app.state.sessionmaker() as session:
        rows = await session.execute(
            select(Notification.kind, Notification.subject)
            .where(Notification.user_id == user_id)
            .order_by(Notification.id)
        )
        return [(str(k), str(s)) for k, s in rows.all()]


async def test_every_job_event_is_one_message_even_when_it_is_delivered_twice(
    app: Any, client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    staff_user, staff = await make_user("operator", username="ev-operator")
    admin_user, _ = await make_user("admin", username="ev-admin")
    owner, member = await make_user("member", username="ev-member")
    printer = await make_machine(client, staff, name="Events printer")
    seen: list[JobChanged] = []

    async def capture(event: JobChanged) -> None:
        seen.append(event)

    app.state.events.subscribe("job.*", capture)

    async def run(title: str, state: JobState, reason: str | None = None) -> int:
        job = (await upload(client, member, title=title)).json()
        resp = await client.post(f"/api/v1/jobs/{job['id']}/approve", headers=staff)
        assert resp.status_code == 200, resp.text
        async with app.state.sessionmaker() as session, session.begin():
            await lifecycle.assign(
                session=session, job=job["id"], machine_id=printer["id"], actor=lifecycle.SYSTEM
            )
            await lifecycle.start(session=session, job=job["id"], at=utcnow())
        async with app.state.sessionmaker() as session, session.begin():
            await lifecycle.end(session=session, job=job["id"], state=state, reason=reason)
        return int(job["id"])

    await run("Hook", JobState.FINISHED)
    await run("Gear", JobState.FAILED, reason="thermal runaway on the hotend")
    # Cancelled by an operator before it ran: a message, and no bed to clear.
    queued = (await upload(client, member, title="Spare")).json()
    await client.post(f"/api/v1/jobs/{queued['id']}/approve", headers=staff)
    cancel = await client.post(f"/api/v1/jobs/{queued['id']}/cancel", headers=staff)
    assert cancel.status_code == 200, cancel.text
    await app.state.events.drain()

    mine = await _kinds(app, owner.id)
    assert [k for k, _ in mine] == [
        "job_approved", "job_started", "job_finished", "bed_clear",
        "job_approved", "job_started", "job_failed",
        "job_approved", "job_cancelled",
    ]  # fmt: skip
    assert ("bed_clear", "Your part 'Hook' is ready on Events printer") in mine
    async with app.state.sessionmaker() as session:
        failed = (
            await session.execute(select(Notification).where(Notification.kind == "job_failed"))
        ).scalar_one()
    assert failed.subject == "Your job 'Gear' failed"
    assert failed.body.startswith("Why: thermal runaway on the hotend")
    assert "heater or its sensor" in failed.body  # the advice a member can act on
    for staff_id in (staff_user.id, admin_user.id):
        assert await _kinds(app, staff_id) == [
            ("bed_clear", "The bed of Events printer needs clearing"),
            ("bed_clear", "The bed of Events printer needs clearing"),
        ]

    # The same events again (a retry, a second process): nothing new.
    before = {uid: await _kinds(app, uid) for uid in (owner.id, staff_user.id, admin_user.id)}
    for event in [e for e in seen if e.topic in ("job.approved", "job.started", "job.ended")]:
        app.state.events.publish(event)
    await app.state.events.drain()
    assert {uid: await _kinds(app, uid) for uid in before} == before


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # rules, not SQL
async def test_a_job_waiting_for_something_unusual_is_told_once_per_reason(
    app: Any, client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    _, staff = await make_user("operator", username="wait-operator")
    owner, member = await make_user("member", username="wait-member")
    await make_machine(client, staff, name="Wait printer")
    job = (await upload(client, member, title="Box")).json()
    await client.post(f"/api/v1/jobs/{job['id']}/approve", headers=staff)

    async def waits(reason: str) -> None:
        async with app.state.sessionmaker() as session, session.begin():
            row = await session.get(Job, job["id"])
            assert row is not None
            row.waiting_reason = reason
            lifecycle.announce_waiting(session=session, job=row)
        await app.state.events.drain()

    await waits("waiting for a compatible machine to be free")  # the ordinary queue
    await waits("waiting: pinned to another machine")  # its own machine is busy
    await waits("staggered start: 3 machines are heating up (limit 3)")
    await waits("no machine in the shop can run this job")
    await waits("no machine in the shop can run this job")  # the matcher's next tick
    await waits("waiting: the machine is booked by a member during the run")
    waiting = [(k, s) for k, s in await _kinds(app, owner.id) if k == "job_waiting"]
    assert waiting == [("job_waiting", "Your job 'Box' is waiting")] * 2
    async with app.state.sessionmaker() as session:
        bodies = (
            await session.execute(
                select(Notification.body)
                .where(Notification.kind == "job_waiting")
                .order_by(Notification.id)
            )
        ).scalars()
        assert list(bodies) == [
            "no machine in the shop can run this job",
            "waiting: the machine is booked by a member during the run",
        ]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # rules, not SQL
async def test_a_member_chooses_the_events_they_hear_about(
    app: Any, client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    _, staff = await make_user("operator", username="pick-operator")
    owner, member = await make_user("member", username="pick-member")
    printer = await make_machine(client, staff, name="Pick printer")
    prefs = await client.get("/api/v1/notifications/preferences", headers=member)
    assert prefs.status_code == 200, prefs.text
    assert prefs.json()["events"] == [
        "approved", "started", "finished", "failed", "waiting", "bed_clear"
    ]  # fmt: skip
    refused = await client.put(
        "/api/v1/notifications/preferences", json={"events": ["exploded"]}, headers=member
    )
    assert refused.status_code == 422
    no_channel = await client.put(
        "/api/v1/notifications/preferences",
        json={"events": ["finished"], "channel_ids": [999]},
        headers=member,
    )
    assert no_channel.status_code == 422
    assert "no channel 999" in no_channel.text
    saved = await client.put(
        "/api/v1/notifications/preferences",
        json={"events": ["finished", "failed"], "email": False},
        headers=member,
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["events"] == ["finished", "failed"]

    job = (await upload(client, member, title="Quiet")).json()
    await client.post(f"/api/v1/jobs/{job['id']}/approve", headers=staff)
    async with app.state.sessionmaker() as session, session.begin():
        await lifecycle.assign(
            session=session, job=job["id"], machine_id=printer["id"], actor=lifecycle.SYSTEM
        )
        await lifecycle.start(session=session, job=job["id"], at=utcnow())
    async with app.state.sessionmaker() as session, session.begin():
        await lifecycle.end(session=session, job=job["id"], state=JobState.FINISHED)
    await app.state.events.drain()
    assert [k for k, _ in await _kinds(app, owner.id)] == ["job_finished"]
