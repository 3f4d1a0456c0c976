"""Machines admin: a Prusa printer behind PrusaLink is added from the dashboard's form, and
its connection is tested against a PrusaLink peer (tests/peers/prusalink_server.py)."""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import Any

import pytest

from microfactory.machines import service as machine_service
from tests.admin.conftest import CSRF, WebClient
from tests.peers.prusalink_server import PrusaLinkServer


@pytest.fixture(scope="module")
def prusalink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrusaLinkServer]:
    server = PrusaLinkServer(tmp_path_factory.mktemp("prusalink-admin") / "gcodes")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def form(server: PrusaLinkServer, **changes: str) -> dict[str, str]:
    return {
        "csrf_token": CSRF,
        "name": "MK4",
        "kind": "fdm_printer",
        "driver": "prusalink",
        "url": server.url,
        "username": server.user,
        "password": server.password,
        "api_key": "",
        "volume_x": "250",
        "volume_y": "210",
        "volume_z": "220",
        "materials": "PLA, PETG",
        **changes,
    }


async def test_admin_adds_a_prusalink_printer_and_tests_its_connection(
    app: Any, web_client: WebClient, prusalink: PrusaLinkServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="drivers")
    caplog.set_level("DEBUG", logger="microfactory")
    web, _ = await web_client()
    page = await web.get("/admin/machines/new")
    assert "PrusaLink (Prusa MK4, XL, MINI, MK3)" in page.text
    assert 'name="username"' in page.text
    resp = await web.post("/admin/machines/new", data=form(prusalink))
    assert resp.status_code == 303, resp.text
    machine_id = int(resp.headers["location"].split("/")[3].split("?")[0])
    async with app.state.sessionmaker() as session:
        machine = await machine_service.get_or_raise(session=session, machine_id=machine_id)
    assert machine.driver == "prusalink"
    assert machine.connection == {
        "url": prusalink.url + "/",
        "username": prusalink.user,
        "password": prusalink.password,
    }
    page = await web.get(f"/admin/machines/{machine_id}")
    assert prusalink.password not in page.text  # a secret is never sent back
    assert "saved: leave blank to keep it" in page.text
    tested = await web.post(f"/admin/machines/{machine_id}/test", data={"csrf_token": CSRF})
    assert "Connection test: connected: firmware 3.14.1-8237" in html.unescape(tested.text)
    # A blank password on the next save keeps the saved one.
    saved = await web.post(f"/admin/machines/{machine_id}", data=form(prusalink, password=""))
    assert saved.status_code == 303, saved.text
    async with app.state.sessionmaker() as session:
        machine = await machine_service.get_or_raise(session=session, machine_id=machine_id)
    assert machine.connection["password"] == prusalink.password
    # A wrong password: the test says PrusaLink refused the credentials, and echoes nothing.
    wrong = form(prusalink, password="wrong-password-9")
    assert (await web.post(f"/admin/machines/{machine_id}", data=wrong)).status_code == 303
    tested = await web.post(f"/admin/machines/{machine_id}/test", data={"csrf_token": CSRF})
    text = html.unescape(tested.text)
    assert "Connection test failed: PrusaLink refused the credentials (HTTP 401)" in text
    assert "wrong-password-9" not in text
    assert "wrong-password-9" not in caplog.text
    assert prusalink.password not in caplog.text


async def test_a_prusalink_printer_needs_credentials_and_an_address(
    web_client: WebClient, prusalink: PrusaLinkServer
) -> None:
    web, _ = await web_client()
    bare = await web.post("/admin/machines/new", data=form(prusalink, username="", password=""))
    assert bare.status_code == 422
    assert "or its API key" in html.unescape(bare.text)
    no_password = await web.post("/admin/machines/new", data=form(prusalink, password=""))
    assert no_password.status_code == 422
    assert "the password on the printer&#39;s screen" in no_password.text
    no_url = await web.post("/admin/machines/new", data=form(prusalink, url="mk4.local"))
    assert no_url.status_code == 422
    assert "write the printer&#39;s address, such as http://prusa-mk4.local" in no_url.text
    assert prusalink.password not in no_url.text
    keyed = await web.post(
        "/admin/machines/new",
        data=form(prusalink, name="MK4 keyed", username="", password="", api_key="abcd-1234"),
    )
    assert keyed.status_code == 303, keyed.text
