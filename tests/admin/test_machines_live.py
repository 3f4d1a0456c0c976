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
