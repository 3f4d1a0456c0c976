"""Uploads that must not reach a machine: text that is not G-code, commands off the allow-list.

From the issue: `notes.txt` was accepted, dispatched, answered "Unknown command" and marked
finished; M112, M211 S0, M906, M413 S0, M540 S0 and M552 S1 ran without anyone's permission.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import UserFactory

PRINT = "G28\nG1 Z0.2 F3000\nM104 S200\nG1 X10 Y10 E1 F1200\n"


@pytest.fixture(autouse=True)
async def printer(client: httpx.AsyncClient, make_user: UserFactory) -> dict[str, Any]:
    _, staff = await make_user("operator", username="setup-operator")
    resp = await client.post(
        "/api/v1/machines",
        json={
            "name": "Printer",
            "kind": "fdm_printer",
            "driver": "marlin",
            "connection": {"port": "/dev/ttyACM0"},
        },
        headers=staff,
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def upload(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    text: str,
    name: str = "part.gcode",
    **form: str,
) -> httpx.Response:
    return await client.post(
        "/api/v1/jobs",
        files={"file": (name, text.encode(), "text/plain")},
        data={"machine_kind": "fdm_printer", **form},
        headers=headers,
    )


async def test_a_text_file_is_refused(client: httpx.AsyncClient, member: dict[str, str]) -> None:
    resp = await upload(client, member, "hello this is not gcode\n", name="notes.txt")
    assert resp.status_code == 422, resp.text
    assert "not a G-code program" in resp.json()["detail"]
    listed = await client.get("/api/v1/jobs", headers=member)
    assert listed.json() == []


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("M112", "emergency stop"),
        ("M211 S0", "software endstops"),
        ("M906 X1200", "motor currents"),
        ("M413 S0", "power-loss recovery"),
        ("M540 S0", "abort-on-endstop-hit"),
        ("M552 S1", "network interface"),
    ],
)
async def test_commands_off_the_allow_list_need_an_operators_permission(
    client: httpx.AsyncClient,
    member: dict[str, str],
    operator: dict[str, str],
    line: str,
    shown: str,
) -> None:
    program = PRINT + line + "\n"
    refused = await upload(client, member, program)
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert line.split()[0] in detail
    assert shown in detail
    assert "operator's permission" in detail
    allowed = await upload(client, operator, program, allow_firmware_commands="true")
    assert allowed.status_code == 201, allowed.text
    assert allowed.json()["allow_firmware_commands"] is True


async def test_a_line_longer_than_marlin_takes_is_refused(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    program = PRINT + "G1 X1." + "0" * 80 + " E2\n"
    resp = await upload(client, operator, program, allow_firmware_commands="true")
    assert resp.status_code == 422, resp.text
    assert "marlin takes at most 82" in resp.json()["detail"]


async def test_a_slicer_program_is_accepted(
    client: httpx.AsyncClient, member: dict[str, str]
) -> None:
    resp = await upload(client, member, PRINT)
    assert resp.status_code == 201, resp.text
