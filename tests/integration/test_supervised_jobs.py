"""Jobs run end to end by supervisors on simulated machines over real ptys."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from microfactory.usage.models import UsageRecord
from tests.integration.conftest import job_json, machine_state, shared_file, wait_for

pytestmark = pytest.mark.timeout(120)

CNC_PROGRAM = (
    b"G21\nG90\nG0 Z5\nG0 X0 Y0\nM3 S10000\nG1 Z-1 F300\n"
    b"G1 X10 F600\nG1 Y10\nG1 X0\nG1 Y0\nG0 Z5\nM5\n"
)


async def add_mill(
    client: httpx.AsyncClient, headers: dict[str, str], **connection: Any
) -> dict[str, Any]:
    body = {
        "name": "Mill",
        "kind": "cnc_mill",
        "driver": "sim-grbl",
        "connection": {"speed_factor": 50, **connection},
        "build_volume_mm": {"x": 300, "y": 300, "z": 60},
    }
    resp = await client.post("/api/v1/machines", json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    machine = dict(resp.json())
    await wait_for(
        lambda: _is(client, headers, machine["id"], "idle"), what="the simulated mill connects"
    )
    return machine


async def _is(
    client: httpx.AsyncClient, headers: dict[str, str], machine_id: int, state: str
) -> bool:
    return await machine_state(client, headers, machine_id) == state


async def submit(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    machine_id: int,
    content: bytes,
    name: str = "part.nc",
) -> dict[str, Any]:
    resp = await client.post(
        "/api/v1/jobs",
        files={"file": (name, content, "text/plain")},
        data={"machine_id": str(machine_id)},
        headers=headers,
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def test_job_runs_to_completion_and_usage_is_recorded(
    live_client: httpx.AsyncClient, live_app: Any, operator: dict[str, str], member: dict[str, str]
) -> None:
    mill = await add_mill(live_client, operator)
    job = await submit(
        live_client,
        member,
        mill["id"],
        shared_file("gcode", "cnc", "pocket-and-contour.nc").read_bytes(),
    )
    await live_client.post(f"/api/v1/jobs/{job['id']}/approve", headers=operator)
    resp = await live_client.post(f"/api/v1/jobs/{job['id']}/dispatch", headers=operator)
    assert resp.status_code == 200, resp.text
    assert resp.json()["machine_id"] == mill["id"]
    assert resp.json()["state"] in ("running", "finished")

    done = await wait_for(
        lambda: _state_in(live_client, operator, job["id"], {"finished", "failed"}), within=90
    )
    assert done["state"] == "finished", done["failure_reason"]
    assert done["progress"]["percent"] == 100.0
    assert done["progress"]["lines_acked"] == done["lines_total"]

    await live_app.state.events.drain()  # usage is recorded by a subscriber, after the commit
    async with live_app.state.sessionmaker() as session:
        usage = list((await session.execute(select(UsageRecord))).scalars())
    assert len(usage) == 1
    assert usage[0].job_id == job["id"]
    assert usage[0].machine_id == mill["id"]
    assert usage[0].outcome == "finished"
    assert usage[0].lines_sent == done["lines_total"]
    assert usage[0].ended_at >= usage[0].started_at

    # The machine is held until the bed is cleared.
    second = await submit(live_client, member, mill["id"], CNC_PROGRAM)
    await live_client.post(f"/api/v1/jobs/{second['id']}/approve", headers=operator)
    held = await live_client.post(f"/api/v1/jobs/{second['id']}/dispatch", headers=operator)
    assert held.status_code == 409
    assert "cleared" in held.json()["detail"]
    cleared = await live_client.post(
        f"/api/v1/jobs/{job['id']}/clear", json={"outcome": "good"}, headers=member
    )
    assert cleared.json()["state"] == "cleared"
    assert cleared.json()["outcome"] == "good"
    ok = await live_client.post(f"/api/v1/jobs/{second['id']}/dispatch", headers=operator)
    assert ok.status_code == 200, ok.text


async def _state_in(
    client: httpx.AsyncClient, headers: dict[str, str], job_id: int, states: set[str]
) -> dict[str, Any] | None:
    job = await job_json(client, headers, job_id)
    return job if job["state"] in states else None


async def test_pause_resume_and_cancel_a_running_job(
    live_client: httpx.AsyncClient, operator: dict[str, str], member: dict[str, str]
) -> None:
    mill = await add_mill(live_client, operator, speed_factor=1)
    long_program = b"G21\nG90\nG1 F600\n" + b"".join(
        f"G1 X{(i % 2) * 50} Y{i % 50}\n".encode() for i in range(200)
    )
    job = await submit(live_client, member, mill["id"], long_program)
    await live_client.post(f"/api/v1/jobs/{job['id']}/approve", headers=operator)
    assert (
        await live_client.post(f"/api/v1/jobs/{job['id']}/dispatch", headers=operator)
    ).status_code == 200

    paused = await live_client.post(f"/api/v1/jobs/{job['id']}/pause", headers=operator)
    assert paused.status_code == 200, paused.text
    assert paused.json()["state"] == "paused"
    # A raw motion command while a job holds the machine is refused.
    raw = await live_client.post(
        f"/api/v1/machines/{mill['id']}/commands", json={"lines": ["G0 X0"]}, headers=operator
    )
    assert raw.status_code == 409
    assert "running job" in raw.json()["detail"]
    # ...but a status query passes.
    status_q = await live_client.post(
        f"/api/v1/machines/{mill['id']}/commands", json={"lines": ["?"]}, headers=operator
    )
    assert status_q.status_code == 200, status_q.text

    resumed = await live_client.post(f"/api/v1/jobs/{job['id']}/resume", headers=operator)
    assert resumed.json()["state"] == "running"
    cancelled = await live_client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=operator)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert await wait_for(lambda: _is(live_client, operator, mill["id"], "idle"))


async def test_disconnect_mid_job_fails_it_with_reason_and_last_line(
    live_client: httpx.AsyncClient, live_app: Any, operator: dict[str, str], member: dict[str, str]
) -> None:
    mill = await add_mill(live_client, operator, faults={"disconnect_after_line": 6})
    job = await submit(live_client, member, mill["id"], CNC_PROGRAM)
    await live_client.post(f"/api/v1/jobs/{job['id']}/approve", headers=operator)
    await live_client.post(f"/api/v1/jobs/{job['id']}/dispatch", headers=operator)
    failed = await wait_for(
        lambda: _state_in(live_client, operator, job["id"], {"failed", "finished"}), within=60
    )
    assert failed["state"] == "failed"
    assert "disconnect" in failed["failure_reason"]
    assert failed["last_acked_line"] is not None
    assert failed["last_acked_line"] < failed["lines_total"]
    await live_app.state.events.drain()  # usage is recorded by a subscriber, after the commit
    async with live_app.state.sessionmaker() as session:
        usage = list((await session.execute(select(UsageRecord))).scalars())
    assert [u.outcome for u in usage] == ["failed"]


async def test_raw_commands_reach_an_idle_machine(
    live_client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    mill = await add_mill(live_client, operator)
    resp = await live_client.post(
        f"/api/v1/machines/{mill['id']}/commands", json={"lines": ["$I", "G0 X1"]}, headers=operator
    )
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [r["ok"] for r in results] == [True, True]
    assert any("VER" in line or "1.1" in line for line in results[0]["reply"])
