"""A member hears about their job (approved, started, finished) and sees an unread badge."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from microfactory.db import utcnow
from microfactory.jobs import lifecycle
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
    assert "unread message" not in after  # opening Messages read them
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
