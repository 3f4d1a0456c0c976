"""An admin's edit of a machine reaches the live grid: its new name on the stream at once."""

from __future__ import annotations

import asyncio
from typing import Any

from microfactory.accounts.models import Role
from tests.admin.conftest import WebClient
from tests.admin.test_machines_admin import MACHINE
from tests.network.requests.test_requests_live import Stream


async def test_the_stream_carries_a_machines_new_name_after_an_edit(
    app: Any, web_client: WebClient
) -> None:
    web, _ = await web_client()
    resp = await web.post("/admin/machines/new", data=MACHINE)
    assert resp.status_code == 303, resp.text
    machine_id = int(resp.headers["location"].split("/")[3].split("?")[0])
    member, _ = await web_client(Role.MEMBER, name="watcher")
    grid = await member.get("/machines")
    assert '<span data-field="machine-count">1 machine</span>' in grid.text

    hub = app.state.fleet.hub
    before = len(hub._queues)
    stream = Stream(app, {"Cookie": f"mf_session={member.cookies['mf_session']}"})
    stream.open()
    while len(hub._queues) < before + 1:  # noqa: ASYNC110 (the hub tells no one it was joined)
        await asyncio.sleep(0.01)
    try:
        edit = {**MACHINE, "name": "Octo 2", "api_key": ""}
        resp = await web.post(f"/admin/machines/{machine_id}", data=edit)
        assert resp.status_code == 303, resp.text
        event = await stream.next("machine")
        assert event["id"] == machine_id
        assert (event["status"]["name"], event["status"]["edited"]) == ("Octo 2", True)
        assert "SECRET" not in str(event)  # the stream never carries the connection
    finally:
        await stream.close()
    grid = await member.get("/machines")
    assert 'data-field="name">Octo 2</a>' in grid.text


async def _open(app: Any, headers: dict[str, str]) -> Stream:
    hub = app.state.fleet.hub
    before = len(hub._queues)
    stream = Stream(app, headers)
    stream.open()
    while len(hub._queues) < before + 1:  # noqa: ASYNC110 (the hub tells no one it was joined)
        await asyncio.sleep(0.01)
    return stream


async def test_the_api_announces_a_machine_added_renamed_disabled_and_deleted(
    app: Any, client: Any, make_user: Any
) -> None:
    _, operator = await make_user(Role.OPERATOR)
    _, member = await make_user(Role.MEMBER)
    stream = await _open(app, member)
    try:
        body = {"name": "Bench saw", "kind": "other", "driver": "manual"}
        resp = await client.post("/api/v1/machines", json=body, headers=operator)
        assert resp.status_code == 201, resp.text
        machine_id = resp.json()["id"]
        # A manual machine has no supervisor to report it: the grid hears of it all the same.
        added = await stream.next("machine")
        assert (added["id"], added["status"]["name"]) == (machine_id, "Bench saw")

        # A rename and, at once, a disable: both reach the page, in order.
        url = f"/api/v1/machines/{machine_id}"
        assert (await client.patch(url, json={"name": "Saw 2"}, headers=operator)).is_success
        assert (await client.patch(url, json={"enabled": False}, headers=operator)).is_success
        renamed, disabled = await stream.next("machine"), await stream.next("machine")
        assert (renamed["status"]["name"], renamed["status"]["edited"]) == ("Saw 2", True)
        assert (disabled["id"], disabled["status"]["name"]) == (machine_id, "Saw 2")

        assert (await client.delete(url, headers=operator)).status_code == 204
        removed = await stream.next("machine")
        assert (removed["id"], removed["status"]["removed"]) == (machine_id, True)
    finally:
        await stream.close()


async def test_every_message_recorded_moves_its_recipients_badge_only(
    app: Any, make_user: Any
) -> None:
    from microfactory.notifications import service as notification_service

    maria, maria_headers = await make_user(Role.MEMBER)
    other, other_headers = await make_user(Role.MEMBER)
    mine, others = await _open(app, maria_headers), await _open(app, other_headers)

    async def record(user_id: int, kind: str, *, commit: bool = True) -> None:
        async with app.state.sessionmaker() as session:
            await notification_service.enqueue(
                session=session, user_id=user_id, kind=kind, subject=kind
            )
            await (session.commit() if commit else session.rollback())

    try:
        await record(maria.id, "booking_cancelled")  # a booking message, no job event
        await record(maria.id, "booking_confirmed", commit=False)  # never happened
        await record(other.id, "booking_released")
        await record(maria.id, "job_finished")
        assert await others.next("notification") == {"kind": "booking_released"}
        assert await mine.next("notification") == {"kind": "booking_cancelled"}
        assert await mine.next("notification") == {"kind": "job_finished"}
    finally:
        await mine.close()
        await others.close()
