"""Per-machine slicer profiles over HTTP: generated from the machine, edited by operators."""

from __future__ import annotations

from typing import Any

import httpx

from microfactory.fabrication.prusaslicer import parse_profile


async def make_printer(
    client: httpx.AsyncClient, headers: dict[str, str], **extra: Any
) -> dict[str, Any]:
    body = {
        "name": "Big printer",
        "kind": "fdm_printer",
        "driver": "marlin",
        "connection": {"port": "/dev/ttyACM0"},
        "build_volume_mm": {"x": 250, "y": 210, "z": 200},
        "capabilities": {"nozzle_diameter_mm": 0.6, "loaded_material": "PETG", "max_bed_c": 70},
        **extra,
    }
    resp = await client.post("/api/v1/machines", json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def test_profile_is_generated_from_the_machine_and_editable_by_operators(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    operator: dict[str, str],
    member: dict[str, str],
) -> None:
    machine = await make_printer(client, admin)
    url = f"/api/v1/machines/{machine['id']}/slicer-profile"
    assert (await client.get(url, headers=member)).status_code == 403

    generated = await client.get(url, headers=operator)
    assert generated.status_code == 200, generated.text
    body = generated.json()
    assert body["generated"] is True
    values = parse_profile(body["profile"])
    assert values["bed_shape"] == "0x0,250x0,250x210,0x210"
    assert values["max_print_height"] == "200"
    assert values["nozzle_diameter"] == "0.6"
    assert values["temperature"] == "240"  # PETG
    assert values["bed_temperature"] == "70"  # PETG wants 80; the bed tops out at 70

    edited = body["profile"].replace("perimeters = 2", "perimeters = 3")
    put = await client.put(url, json={"profile": edited}, headers=operator)
    assert put.status_code == 200, put.text
    assert put.json()["generated"] is False
    assert put.json()["profile"] == edited
    assert (await client.get(url, headers=operator)).json()["profile"] == edited
    assert (await client.put(url, json={"profile": edited}, headers=member)).status_code == 403

    reset = await client.delete(url, headers=operator)
    assert reset.json()["generated"] is True


async def test_bad_profiles_are_refused_naming_the_line(
    client: httpx.AsyncClient, operator: dict[str, str], admin: dict[str, str]
) -> None:
    machine = await make_printer(client, admin)
    url = f"/api/v1/machines/{machine['id']}/slicer-profile"
    cases = {
        "layer_height = 0.2\nthis is not a setting\n": "line 2",
        "layer_height = 0.2\nlayer_height = 0.3\n": "set twice",
        "post_process = /bin/sh -c 'rm -rf /'\n": "not allowed",
        "Bad Key = 1\n": "not a PrusaSlicer setting",
        "# only a comment\n": "no settings",
        "printer_technology = SLA\n": "only FFF",
    }
    for text, needle in cases.items():
        resp = await client.put(url, json={"profile": text}, headers=operator)
        assert resp.status_code == 422, text
        assert needle in resp.json()["detail"], (text, resp.json())
    assert (await client.get(url, headers=operator)).json()["generated"] is True


async def test_only_printers_have_profiles(
    client: httpx.AsyncClient, operator: dict[str, str], admin: dict[str, str]
) -> None:
    mill = await make_printer(
        client, admin, name="Mill", kind="cnc_mill", driver="grbl", capabilities={}
    )
    resp = await client.get(f"/api/v1/machines/{mill['id']}/slicer-profile", headers=operator)
    assert resp.status_code == 409
    assert "only FDM printers" in resp.json()["detail"]
    missing = await client.get("/api/v1/machines/999/slicer-profile", headers=operator)
    assert missing.status_code == 404


async def test_deleting_a_machine_deletes_its_profile(
    client: httpx.AsyncClient, operator: dict[str, str], admin: dict[str, str]
) -> None:
    machine = await make_printer(client, admin)
    url = f"/api/v1/machines/{machine['id']}/slicer-profile"
    await client.put(url, json={"profile": "layer_height = 0.1\n"}, headers=operator)
    deleted = await client.delete(f"/api/v1/machines/{machine['id']}", headers=admin)
    assert deleted.status_code in (200, 204), deleted.text
