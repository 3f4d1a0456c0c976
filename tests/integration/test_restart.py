"""A restart of the server never loses a job's state."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from microfactory.app import create_app
from microfactory.config import Settings
from tests.conftest import UserFactory
from tests.integration.conftest import job_json, machine_state, wait_for

pytestmark = pytest.mark.timeout(120)


async def test_serial_job_running_at_restart_is_failed_with_its_last_line(
    settings: Settings, make_user: UserFactory
) -> None:
    live = settings.model_copy(update={"run_supervisors": True, "auto_dispatch": False})
    _, operator = await make_user("operator")
    program = b"G21\nG90\nG1 F300\n" + b"".join(
        f"G1 X{(i % 2) * 40} Y{i % 40}\n".encode() for i in range(300)
    )

    app = create_app(live)
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        async with client:
            machine = (
                await client.post(
                    "/api/v1/machines",
                    json={
                        "name": "Mill",
                        "kind": "cnc_mill",
                        "driver": "sim-grbl",
                        "connection": {"speed_factor": 1},
                    },
                    headers=operator,
                )
            ).json()
            await wait_for(lambda: _idle(client, operator, machine["id"]))
            job = (
                await client.post(
                    "/api/v1/jobs",
                    files={"file": ("long.nc", program, "text/plain")},
                    data={"machine_id": str(machine["id"])},
                    headers=operator,
                )
            ).json()
            assert job["state"] == "queued"  # operators' own jobs need no approval
            await client.post(f"/api/v1/jobs/{job['id']}/dispatch", headers=operator)
            await wait_for(lambda: _acked(client, operator, job["id"]), within=30)

    # The server stopped mid-job (the supervisor's last progress write is what survives).
    app2 = create_app(live)
    async with app2.router.lifespan_context(app2):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app2), base_url="http://t")
        async with client:
            after = await job_json(client, operator, job["id"])
            assert after["state"] == "failed"
            assert after["failure_reason"].startswith("interrupted by a restart")
            assert "last acknowledged line" in after["failure_reason"]
            # The machine comes back and is held until the bed is cleared.
            await wait_for(lambda: _idle(client, operator, machine["id"]))
            cleared = await client.post(
                f"/api/v1/jobs/{job['id']}/clear",
                json={"outcome": "bad", "requeue": True},
                headers=operator,
            )
            assert cleared.status_code == 200
            jobs = (await client.get("/api/v1/jobs", headers=operator)).json()
            assert [j["state"] for j in jobs] == ["queued", "cleared"]


async def _idle(client: httpx.AsyncClient, headers: dict[str, str], machine_id: int) -> bool:
    return await machine_state(client, headers, machine_id) == "idle"


async def _acked(client: httpx.AsyncClient, headers: dict[str, str], job_id: int) -> Any:
    job = await job_json(client, headers, job_id)
    return (job["last_acked_line"] or 0) > 10
