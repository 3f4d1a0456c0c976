"""A line the firmware does not know fails the job (or flags it), by the shop's setting.

From the issue: a program was answered "Unknown command" by the printer and still marked
`finished`. Marlin answers `echo:Unknown command: "…"` plus an ok and runs on; GRBL answers
`error:20`. With `unknown_command_policy` "fail" (the default) the job stops and fails with
the reason naming the line; with "flag" it runs to the end and the line is kept in its flags.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from microfactory.app import create_app
from microfactory.config import Settings
from tests.conftest import UserFactory
from tests.integration.conftest import job_json, machine_state, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

# An operator's job may carry commands off the allow-list (allow_firmware_commands); M7777 is
# no Marlin command, M105 is none of GRBL's. Each sits on line 4.
PRINT = b"G28\nG1 Z0.2 F3000\nG1 X10 Y10 F3000\nM7777 S1\n" + b"".join(
    f"G1 X{10 + i % 20} Y{10 + i % 7} F3000\n".encode() for i in range(40)
)
CUT = b"G21\nG90\nG0 Z5\nM105\n" + b"".join(
    f"G1 X{i % 20} Y{i % 9} F900\n".encode() for i in range(40)
)


async def _client(settings: Settings, policy: str) -> AsyncIterator[httpx.AsyncClient]:
    live = settings.model_copy(
        update={"run_supervisors": True, "auto_dispatch": False, "unknown_command_policy": policy}
    )
    app = create_app(live)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c


@pytest.fixture(params=["fail", "flag"])
async def policy_client(
    request: pytest.FixtureRequest, settings: Settings
) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    async for c in _client(settings, request.param):
        yield request.param, c


async def _run(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    machine: dict[str, Any],
    program: bytes,
    name: str,
) -> dict[str, Any]:
    resp = await client.post("/api/v1/machines", json=machine, headers=headers)
    assert resp.status_code == 201, resp.text
    machine_id = resp.json()["id"]
    await wait_for(
        lambda: _idle(client, headers, machine_id), within=60, what="the simulator connects"
    )
    job = await client.post(
        "/api/v1/jobs",
        files={"file": (name, program, "text/plain")},
        data={"machine_id": str(machine_id), "allow_firmware_commands": "true"},
        headers=headers,
    )
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    dispatched = await client.post(f"/api/v1/jobs/{job_id}/dispatch", headers=headers)
    assert dispatched.status_code == 200, dispatched.text

    async def ended() -> dict[str, Any] | None:
        j = await job_json(client, headers, job_id)
        return j if j["state"] in ("finished", "failed", "cancelled") else None

    return dict(await wait_for(ended, within=90, what="the job ends"))


async def _idle(client: httpx.AsyncClient, headers: dict[str, str], machine_id: int) -> bool:
    return await machine_state(client, headers, machine_id) == "idle"


async def test_marlin_unknown_command_fails_or_flags_the_job(
    policy_client: tuple[str, httpx.AsyncClient], make_user: UserFactory
) -> None:
    policy, client = policy_client
    _, operator = await make_user("operator")
    machine = {
        "name": "Printer",
        "kind": "fdm_printer",
        "driver": "sim-marlin",
        "connection": {"speed_factor": 50},
        "build_volume_mm": {"x": 220, "y": 220, "z": 250},
    }
    job = await _run(client, operator, machine, PRINT, "part.gcode")
    if policy == "fail":
        assert job["state"] == "failed", job
        assert "line 4" in job["failure_reason"]
        assert "M7777" in job["failure_reason"]
        assert "Unknown command" in job["failure_reason"]
        assert job["last_acked_line"] < job["lines_total"]
    else:
        assert job["state"] == "finished", job["failure_reason"]
        refused = job["flags"]["firmware_rejected"]
        assert [(r["line_number"], r["line"].split()[0]) for r in refused] == [(4, "M7777")]


async def test_grbl_error_20_fails_or_flags_the_job(
    policy_client: tuple[str, httpx.AsyncClient], make_user: UserFactory
) -> None:
    policy, client = policy_client
    _, operator = await make_user("operator")
    machine = {
        "name": "Mill",
        "kind": "cnc_mill",
        "driver": "sim-grbl",
        "connection": {"speed_factor": 50},
        "build_volume_mm": {"x": 300, "y": 300, "z": 60},
    }
    job = await _run(client, operator, machine, CUT, "part.nc")
    if policy == "fail":
        assert job["state"] == "failed", job
        assert "line 4" in job["failure_reason"]
        assert "M105" in job["failure_reason"]
        assert "error:20" in job["failure_reason"]
    else:
        assert job["state"] == "finished", job["failure_reason"]
        refused = job["flags"]["firmware_rejected"]
        assert [(r["line_number"], r["line"]) for r in refused] == [(4, "M105")]
        assert "error:20" in refused[0]["reply"]
