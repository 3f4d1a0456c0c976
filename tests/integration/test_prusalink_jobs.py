"""Jobs on a Prusa printer behind PrusaLink, driven by a supervisor: dispatch from the queue,
progress, pause, resume, cancel, completion with usage, a printer error, an upload refusal,
and re-attaching after our restart while PrusaLink itself restarts.

The peer is tests/peers/prusalink_server.py (PrusaLink's v1 API over real HTTP with digest
auth); docs/prusalink.md says why the real PrusaLink does not print here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from microfactory.app import create_app
from microfactory.config import Settings
from microfactory.usage.models import UsageRecord
from tests.conftest import UserFactory
from tests.integration.conftest import job_json, machine_state, wait_for
from tests.peers.prusalink_server import PrusaLinkServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def program(moves: int) -> bytes:
    """Back and forth, 0.5 mm at F60: 0.05 s a move on the peer (our planner, 10 times faster)."""
    lines = ["G28", "G91", *(f"G1 X{0.5 if i % 2 == 0 else -0.5} F60" for i in range(moves))]
    lines.append("G90")
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def db_url(sqlite_database: str) -> str:
    """SQLite only: the job lifecycle these tests go through is the one the OctoPrint and
    Marlin job tests already run on both backends; here the driver is under test."""
    from tests.conftest import _truncate

    _truncate(sqlite_database)
    return sqlite_database


@pytest.fixture(scope="module")
def prusalink_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrusaLinkServer]:
    server = PrusaLinkServer(tmp_path_factory.mktemp("prusalink-jobs") / "gcodes")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prusalink(prusalink_server: PrusaLinkServer) -> PrusaLinkServer:
    if prusalink_server._server is None:
        prusalink_server.start()
    prusalink_server.printer.reset()
    prusalink_server.printer.free_space = 1 << 30
    return prusalink_server


async def _add_printer(
    client: httpx.AsyncClient, headers: dict[str, str], server: PrusaLinkServer
) -> dict[str, Any]:
    resp = await client.post(
        "/api/v1/machines",
        json={
            "name": "MK3S",
            "kind": "fdm_printer",
            "driver": "prusalink",
            "connection": {
                "url": server.url,
                "username": server.user,
                "password": server.password,
                "poll_interval_s": 0.2,
                "max_backoff_s": 1,
            },
            "build_volume_mm": {"x": 250, "y": 210, "z": 210},
        },
        headers=headers,
    )
    assert resp.status_code == 201, resp.text
    machine = dict(resp.json())
    assert machine["connection"]["password"] != server.password  # masked
    assert server.password not in resp.text
    await wait_for(lambda: _state(client, headers, machine["id"], "idle"), within=30)
    return machine


async def _state(
    client: httpx.AsyncClient, headers: dict[str, str], machine_id: int, state: str
) -> bool:
    return await machine_state(client, headers, machine_id) == state


async def _job_in(
    client: httpx.AsyncClient, headers: dict[str, str], job_id: int, states: set[str]
) -> Any:
    job = await job_json(client, headers, job_id)
    return job if job["state"] in states else None


async def _queue(
    client: httpx.AsyncClient, headers: dict[str, str], machine_id: int, moves: int
) -> dict[str, Any]:
    resp = await client.post(
        "/api/v1/jobs",
        files={"file": ("part.gcode", program(moves), "text/plain")},
        data={"machine_id": str(machine_id)},
        headers=headers,
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def _submit(
    client: httpx.AsyncClient, headers: dict[str, str], machine_id: int, moves: int
) -> dict[str, Any]:
    job = await _queue(client, headers, machine_id, moves)
    dispatched = await client.post(f"/api/v1/jobs/{job['id']}/dispatch", headers=headers)
    assert dispatched.status_code == 200, dispatched.text
    return job


async def _usage(app: Any) -> list[tuple[int, str]]:
    await app.state.events.drain()
    async with app.state.sessionmaker() as session:
        rows = (await session.execute(select(UsageRecord))).scalars()
        return [(u.job_id, u.outcome) for u in rows]


async def test_a_job_runs_from_the_queue_to_finished_with_pause_resume_and_cancel(
    live_app: Any,
    live_client: httpx.AsyncClient,
    prusalink: PrusaLinkServer,
    make_user: UserFactory,
) -> None:
    client = live_client
    _, op = await make_user("operator")
    printer = await _add_printer(client, op, prusalink)
    job = await _submit(client, op, printer["id"], 30)  # about 1.5 s
    done = await wait_for(
        lambda: _job_in(client, op, job["id"], {"finished", "failed", "cancelled"}), within=60
    )
    assert done["state"] == "finished", done["failure_reason"]
    assert done["progress"]["percent"] == 100.0
    assert await _usage(live_app) == [(job["id"], "finished")]
    await client.post(f"/api/v1/jobs/{job['id']}/clear", json={"outcome": "good"}, headers=op)
    await wait_for(lambda: _state(client, op, printer["id"], "idle"), within=30)

    again = await _submit(client, op, printer["id"], 2000)  # 100 s: it will not finish
    await wait_for(lambda: _job_in(client, op, again["id"], {"running"}), within=30)
    # The grid shows the print live.
    live = (await client.get(f"/api/v1/machines/{printer['id']}", headers=op)).json()["status"]
    assert live["state"] == "running"
    assert live["message"].startswith("printing mf-part-")
    paused = await client.post(f"/api/v1/jobs/{again['id']}/pause", headers=op)
    assert paused.status_code == 200, paused.text
    assert paused.json()["state"] == "paused"
    assert prusalink.printer.state == "PAUSED"
    resumed = await client.post(f"/api/v1/jobs/{again['id']}/resume", headers=op)
    assert resumed.json()["state"] == "running"
    assert prusalink.printer.state == "PRINTING"
    cancelled = await client.post(f"/api/v1/jobs/{again['id']}/cancel", headers=op)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert prusalink.printer.state == "STOPPED"


async def test_a_printer_error_fails_the_job_and_a_refused_upload_starts_nothing(
    live_app: Any,
    live_client: httpx.AsyncClient,
    prusalink: PrusaLinkServer,
    make_user: UserFactory,
) -> None:
    client = live_client
    _, op = await make_user("operator")
    printer = await _add_printer(client, op, prusalink)
    # The printer's storage is full: the job is not started, and the refusal says why.
    prusalink.printer.free_space = 10
    uploads = len(prusalink.uploads)
    job = await _queue(client, op, printer["id"], 40)
    refused = await client.post(f"/api/v1/jobs/{job['id']}/dispatch", headers=op)
    assert refused.status_code == 409, refused.text
    assert "HTTP 413" in refused.text
    assert "no room" in refused.text
    assert len(prusalink.uploads) == uploads
    assert prusalink.printer.job_id is None
    prusalink.printer.free_space = 1 << 30
    # A fault at the printer mid-job fails the job with the printer's own message.
    job = await _submit(client, op, printer["id"], 2000)
    await wait_for(lambda: _job_in(client, op, job["id"], {"running"}), within=30)
    prusalink.printer.error("HEATBED THERMAL RUNAWAY")
    done = await wait_for(
        lambda: _job_in(client, op, job["id"], {"finished", "failed", "cancelled"}), within=30
    )
    assert done["state"] == "failed"
    assert done["failure_reason"].startswith("printer error: HEATBED THERMAL RUNAWAY")
    assert await _usage(live_app) == [(job["id"], "failed")]
    live = (await client.get(f"/api/v1/machines/{printer['id']}", headers=op)).json()["status"]
    assert live["state"] == "error"
    assert "HEATBED THERMAL RUNAWAY" in live["message"]


async def test_a_job_survives_our_restart_and_prusalinks(
    settings: Settings, prusalink: PrusaLinkServer, make_user: UserFactory, tmp_path: Path
) -> None:
    live = settings.model_copy(update={"run_supervisors": True, "auto_dispatch": False})
    _, op = await make_user("operator")
    app = create_app(live)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        printer = await _add_printer(c, op, prusalink)
        job = await _submit(c, op, printer["id"], 60)  # about 3 s
        await wait_for(lambda: _job_in(c, op, job["id"], {"running"}), within=30)
    # microfactory is down, and PrusaLink restarts too; the printer prints on. On the way
    # back up the job is not failed (as a serial job would be) but followed to its end.
    await asyncio.to_thread(prusalink.restart, 0.3)
    app2 = create_app(live)
    async with (
        app2.router.lifespan_context(app2),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app2), base_url="http://t") as c,
    ):
        first = await job_json(c, op, job["id"])
        assert first["state"] in ("running", "finished"), first["failure_reason"]
        done = await wait_for(lambda: _job_in(c, op, job["id"], {"finished", "failed"}), within=60)
        assert done["state"] == "finished", done["failure_reason"]
