"""Machines admin: a Klipper printer behind Moonraker is added from the dashboard's form."""

from __future__ import annotations

from typing import Any

from microfactory.machines import service as machine_service
from tests.admin.conftest import CSRF, WebClient

MOONRAKER = {
    "csrf_token": CSRF,
    "name": "Voron",
    "kind": "fdm_printer",
    "driver": "moonraker",
    "url": "http://127.0.0.1:9",
    "api_key": "",
    "volume_x": "300",
    "volume_y": "300",
    "volume_z": "280",
    "materials": "PLA, ABS",
}


async def test_admin_adds_a_moonraker_printer_with_or_without_a_key(
    app: Any, web_client: WebClient
) -> None:
    web, _ = await web_client()
    form = await web.get("/admin/machines/new")
    assert "Moonraker (Klipper)" in form.text
    resp = await web.post("/admin/machines/new", data=MOONRAKER)
    assert resp.status_code == 303, resp.text
    machine_id = int(resp.headers["location"].split("/")[3].split("?")[0])
    async with app.state.sessionmaker() as session:
        machine = await machine_service.get_or_raise(session=session, machine_id=machine_id)
    assert machine.driver == "moonraker"
    assert machine.connection == {"url": "http://127.0.0.1:9/"}
    # A key typed later is kept, and a blank one on the next save keeps it.
    keyed = {**MOONRAKER, "api_key": "moonraker-key-0123"}
    assert (await web.post(f"/admin/machines/{machine_id}", data=keyed)).status_code == 303
    assert (await web.post(f"/admin/machines/{machine_id}", data=MOONRAKER)).status_code == 303
    async with app.state.sessionmaker() as session:
        machine = await machine_service.get_or_raise(session=session, machine_id=machine_id)
    assert machine.connection["api_key"] == "moonraker-key-0123"
    page = await web.get(f"/admin/machines/{machine_id}")
    assert "moonraker-key-0123" not in page.text


async def test_a_moonraker_printer_without_a_proper_address_is_refused(
    web_client: WebClient,
) -> None:
    web, _ = await web_client()
    resp = await web.post("/admin/machines/new", data={**MOONRAKER, "url": "voron.local"})
    assert resp.status_code == 422
    assert "write Moonraker&#39;s address, such as http://voron.local:7125" in resp.text
