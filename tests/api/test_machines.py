"""The machine registry over HTTP, including every bad input the issue names."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

MARLIN = {
    "name": "Prusa #1",
    "kind": "fdm_printer",
    "driver": "marlin",
    "connection": {"port": "/dev/ttyACM0", "baudrate": 115200},
    "build_volume_mm": {"x": 250, "y": 210, "z": 210},
    "capabilities": {"nozzle_diameter_mm": 0.4, "materials": ["PLA", "PETG"], "tags": ["mk3"]},
}
OCTO = {
    "name": "Octo #1",
    "kind": "fdm_printer",
    "driver": "octoprint",
    "connection": {"url": "http://127.0.0.1:5000", "api_key": "ABCDEF0123456789WXYZ"},
}


async def create(
    client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any]
) -> httpx.Response:
    return await client.post("/api/v1/machines", json=body, headers=headers)


async def test_operator_registers_machine_and_member_reads_it(
    client: httpx.AsyncClient, operator: dict[str, str], member: dict[str, str]
) -> None:
    resp = await create(client, operator, MARLIN)
    assert resp.status_code == 201, resp.text
    machine = resp.json()
    assert machine["build_volume_mm"] == {"x": 250, "y": 210, "z": 210}
    got = await client.get(f"/api/v1/machines/{machine['id']}", headers=member)
    assert got.status_code == 200
    assert got.json()["capabilities"]["materials"] == ["PLA", "PETG"]
    # No supervisor runs in this test: a driven machine is offline.
    assert got.json()["status"]["state"] == "offline"
    listed = await client.get("/api/v1/machines", headers=member)
    assert [m["name"] for m in listed.json()] == ["Prusa #1"]


async def test_manual_machine_is_idle(client: httpx.AsyncClient, operator: dict[str, str]) -> None:
    body = {"name": "Laser", "kind": "laser_cutter", "driver": "manual"}
    resp = await create(client, operator, body)
    assert resp.status_code == 201
    assert resp.json()["status"]["state"] == "idle"


async def test_api_key_is_never_returned_in_full(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    resp = await create(client, operator, OCTO)
    assert resp.status_code == 201
    assert resp.json()["connection"]["api_key"] == "****WXYZ"
    listed = await client.get("/api/v1/machines", headers=operator)
    assert "ABCDEF0123456789WXYZ" not in listed.text


async def test_masked_key_sent_back_keeps_the_stored_key(
    client: httpx.AsyncClient, operator: dict[str, str], app: Any
) -> None:
    machine = (await create(client, operator, OCTO)).json()
    resp = await client.patch(
        f"/api/v1/machines/{machine['id']}",
        json={"connection": {**machine["connection"], "url": "http://127.0.0.1:5001"}},
        headers=operator,
    )
    assert resp.status_code == 200, resp.text
    from microfactory.machines.models import Machine

    async with app.state.sessionmaker() as session:
        stored = await session.get(Machine, machine["id"])
        assert stored is not None
        assert stored.connection["api_key"] == "ABCDEF0123456789WXYZ"
        assert stored.connection["url"] == "http://127.0.0.1:5001/"


async def test_unknown_driver_is_422_naming_the_valid_ones(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    resp = await create(client, operator, {**MARLIN, "driver": "repetier"})
    assert resp.status_code == 422
    text = resp.text
    for name in ("marlin", "grbl", "octoprint", "manual", "sim-marlin", "sim-grbl"):
        assert name in text


@pytest.mark.parametrize(
    ("connection", "needle"),
    [
        ({}, "port"),
        ({"port": "/dev/ttyACM0", "baudrate": 12345}, "baudrate"),
        ({"port": "ttyACM0"}, "device path"),
        ({"port": "/dev/ttyACM0", "speed": 3}, "not a setting"),
    ],
)
async def test_invalid_serial_connection_is_422(
    client: httpx.AsyncClient, operator: dict[str, str], connection: dict[str, Any], needle: str
) -> None:
    resp = await create(client, operator, {**MARLIN, "connection": connection})
    assert resp.status_code == 422
    assert needle in resp.text


async def test_octoprint_needs_url_and_key(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    resp = await create(client, operator, {**OCTO, "connection": {"url": "not a url"}})
    assert resp.status_code == 422
    assert "api_key" in resp.text
    assert "url" in resp.text


async def test_duplicate_name_is_409(client: httpx.AsyncClient, operator: dict[str, str]) -> None:
    assert (await create(client, operator, MARLIN)).status_code == 201
    again = await create(client, operator, MARLIN)
    assert again.status_code == 409
    assert "already exists" in again.json()["detail"]


async def test_rename_to_taken_name_is_409(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    await create(client, operator, MARLIN)
    other = (await create(client, operator, {**MARLIN, "name": "Prusa #2"})).json()
    resp = await client.patch(
        f"/api/v1/machines/{other['id']}", json={"name": "Prusa #1"}, headers=operator
    )
    assert resp.status_code == 409


async def test_member_cannot_write(
    client: httpx.AsyncClient, member: dict[str, str], operator: dict[str, str]
) -> None:
    assert (await create(client, member, MARLIN)).status_code == 403
    machine = (await create(client, operator, MARLIN)).json()
    patch = await client.patch(
        f"/api/v1/machines/{machine['id']}", json={"notes": "x"}, headers=member
    )
    assert patch.status_code == 403
    delete = await client.delete(f"/api/v1/machines/{machine['id']}", headers=member)
    assert delete.status_code == 403
    cmd = await client.post(
        f"/api/v1/machines/{machine['id']}/commands", json={"lines": ["M105"]}, headers=member
    )
    assert cmd.status_code == 403


async def test_update_and_delete(client: httpx.AsyncClient, operator: dict[str, str]) -> None:
    machine = (await create(client, operator, MARLIN)).json()
    resp = await client.patch(
        f"/api/v1/machines/{machine['id']}",
        json={"maintenance": True, "notes": "new hotend", "capabilities": {"materials": ["PLA"]}},
        headers=operator,
    )
    assert resp.status_code == 200
    assert resp.json()["maintenance"] is True
    assert resp.json()["capabilities"]["materials"] == ["PLA"]
    assert (
        await client.delete(f"/api/v1/machines/{machine['id']}", headers=operator)
    ).status_code == 204
    assert (
        await client.get(f"/api/v1/machines/{machine['id']}", headers=operator)
    ).status_code == 404


async def test_changing_driver_needs_connection(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    machine = (await create(client, operator, MARLIN)).json()
    resp = await client.patch(
        f"/api/v1/machines/{machine['id']}", json={"driver": "grbl"}, headers=operator
    )
    assert resp.status_code == 422
    resp = await client.patch(
        f"/api/v1/machines/{machine['id']}",
        json={"driver": "octoprint", "connection": {"url": "http://x"}},
        headers=operator,
    )
    assert resp.status_code == 422
    assert "api_key" in resp.text


async def test_commands_to_an_offline_machine_are_409(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    machine = (await create(client, operator, MARLIN)).json()
    resp = await client.post(
        f"/api/v1/machines/{machine['id']}/commands", json={"lines": ["M105"]}, headers=operator
    )
    assert resp.status_code == 409
    assert "cannot take commands" in resp.json()["detail"]  # not connected, or no host


async def test_malformed_json_is_422(client: httpx.AsyncClient, operator: dict[str, str]) -> None:
    resp = await client.post(
        "/api/v1/machines",
        content=b'{"name": "x", "kind": ',
        headers={**operator, "Content-Type": "application/json"},
    )
    assert resp.status_code == 422
    assert "detail" in resp.json()


async def test_body_over_the_limit_is_413(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    body = {**MARLIN, "notes": "x" * 100_000}  # the test settings allow 64 KiB
    resp = await client.post("/api/v1/machines", json=body, headers=operator)
    assert resp.status_code == 413
    assert "limit" in resp.json()["detail"]
    listed = await client.get("/api/v1/machines", headers=operator)
    assert listed.json() == []


async def test_chunked_body_over_the_limit_is_413(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    async def chunks():  # no Content-Length: the limit must still hold
        for _ in range(100):
            yield b"x" * 1024

    resp = await client.post(
        "/api/v1/machines",
        content=chunks(),
        headers={**operator, "Content-Type": "application/json"},
    )
    assert resp.status_code == 413


async def test_unknown_machine_is_404(client: httpx.AsyncClient, member: dict[str, str]) -> None:
    resp = await client.get("/api/v1/machines/9999", headers=member)
    assert resp.status_code == 404
    assert resp.json() == {"detail": "machine 9999 not found"}
