"""Licence rules on jobs made from designs, through the jobs API."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.designs.conftest import post_design

GCODE = b"G21\nG90\nM82\nG92 E0\nG1 X10 Y10 E1 F1200\nG1 X20 Y10 E2\n"
SCAD = b"width = 20; // [10:1:60]\ncube([width, 10, 5]);\n"


async def _printer(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    resp = await client.post(
        "/api/v1/machines",
        json={
            "name": "Printer",
            "kind": "fdm_printer",
            "driver": "marlin",
            "connection": {"port": "/dev/ttyACM0"},
            "build_volume_mm": {"x": 200, "y": 200, "z": 200},
            "capabilities": {"nozzle_diameter_mm": 0.4, "loaded_material": "PLA"},
        },
        headers=headers,
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def test_non_commercial_design_is_flagged_on_a_priced_job(
    client: httpx.AsyncClient, app: Any, member: dict[str, str], operator: dict[str, str]
) -> None:
    await _printer(client, operator)
    design = (
        await post_design(client, member, [("part.gcode", GCODE)], licence="CC-BY-NC-4.0")
    ).json()
    body = {"design_id": design["id"], "machine_kind": "fdm_printer"}
    free = (await client.post("/api/v1/jobs", json=body, headers=member)).json()
    priced = (await client.post("/api/v1/jobs", json={**body, "price": 4.5}, headers=member)).json()
    assert free["flags"]["licence_nc"] is True
    assert free["flags"]["nc_with_price"] is False
    assert priced["flags"]["nc_with_price"] is True
    assert priced["attribution"]["nc"] is True
    assert priced["attribution"]["licence"] == "CC-BY-NC-4.0"
    # The G-code passes through; the job becomes ready once prepared.
    for _ in range(100):
        got = (await client.get(f"/api/v1/jobs/{priced['id']}", headers=member)).json()
        if got["preparation"] != "pending" and got["preparation"] != "running":
            break
        await asyncio.sleep(0.05)
    assert got["preparation"] == "ready", got["preparation_log"]
    assert got["lines_total"] == 6


async def test_no_derivatives_licence_refuses_changed_parameters_with_409(
    client: httpx.AsyncClient, member: dict[str, str], operator: dict[str, str]
) -> None:
    await _printer(client, operator)
    design = (
        await post_design(client, member, [("box.scad", SCAD)], licence="CC-BY-ND-4.0")
    ).json()
    resp = await client.post(
        "/api/v1/jobs",
        json={"design_id": design["id"], "parameters": {"width": 30}},
        headers=member,
    )
    assert resp.status_code == 409
    assert "derivatives" in resp.json()["detail"]
    as_published = await client.post(
        "/api/v1/jobs", json={"design_id": design["id"], "parameters": {}}, headers=member
    )
    assert as_published.status_code == 201, as_published.text


async def test_design_job_bad_input_is_4xx(
    client: httpx.AsyncClient, member: dict[str, str], operator: dict[str, str]
) -> None:
    await _printer(client, operator)
    design = (await post_design(client, member, [("box.scad", SCAD)])).json()
    cases = [
        ({"design_id": 99999}, 404),
        ({"design_id": design["id"], "parameters": {"width": 61}}, 422),
        ({"design_id": design["id"], "parameters": {"depth": 3}}, 422),
        ({"design_id": design["id"], "copies": 0}, 422),
        ({"design_id": design["id"], "machine_kind": "cnc_mill"}, 422),
        ({"design_id": design["id"], "bogus": 1}, 422),
    ]
    for body, status in cases:
        resp = await client.post("/api/v1/jobs", json=body, headers=member)
        assert resp.status_code == status, (body, resp.text)
        assert "detail" in resp.json()
    bad_json = await client.post(
        "/api/v1/jobs", content=b"{not json", headers={**member, "Content-Type": "application/json"}
    )
    assert bad_json.status_code == 422
    wrong_type = await client.post(
        "/api/v1/jobs", content=b"hello", headers={**member, "Content-Type": "text/plain"}
    )
    assert wrong_type.status_code == 422
