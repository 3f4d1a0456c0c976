"""Jobs through a real OctoPrint server (its virtual printer), driven by a supervisor:
dispatch, progress, pause, resume, completion, usage, and re-attaching after our restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from microfactory.app import create_app
from microfactory.config import Settings
from tests.conftest import UserFactory, require_or_skip
from tests.integration.conftest import job_json, machine_state, wait_for
from tests.peers.octoprint_server import OctoPrintServer, octoprint_executable, running_octoprint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def program(moves: int) -> bytes:
    """Relative 0.5 mm moves at F60: about 0.05 s each on OctoPrint's virtual printer."""
    lines = ["G28", "G91", *("G1 X0.5 F60" for _ in range(moves)), "G90"]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def octoprint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OctoPrintServer]:
    require_or_skip(octoprint_executable() is not None, "OctoPrint's venv is not installed")
    with running_octoprint(tmp_path_factory.mktemp("octoprint-jobs")) as server:
        yield server


async def _add_printer(
    client: httpx.AsyncClient, headers: dict[str, str], server: OctoPrintServer
) -> dict[str, Any]:
    resp = await client.post(
        "/api/v1/machines",
        json={
            "name": "Octo",
            "kind": "fdm_printer",
            "driver": "octoprint",
            "connection": {"url": server.url, "api_key": server.api_key, "printer_port": "VIRTUAL"},
            "build_volume_mm": {"x": 220, "y": 220, "z": 250},
        },
        headers=headers,
    )
    assert resp.status_code == 201, resp.text
    machine = dict(resp.json())
    assert machine["connection"]["api_key"].startswith("****")
    await wait_for(lambda: _state(client, headers, machine["id"], "idle"), within=60)
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


async def _submit(
    client: httpx.AsyncClient, headers: dict[str, str], machine_id: int, moves: int
) -> dict[str, Any]:
    resp = await client.post(
        "/api/v1/jobs",
        files={"file": ("part.gcode", program(moves), "text/plain")},
        data={"machine_id": str(machine_id)},
        headers=headers,
    )
    assert resp.status_code == 201, resp.text
    job = dict(resp.json())
    dispatched = await client.post(f"/api/v1/jobs/{job['id']}/dispatch", headers=headers)
    assert dispatched.status_code == 200, dispatched.text
    return job


async def test_print_pause_resume_and_finish(
    live_client: httpx.AsyncClient, octoprint: OctoPrintServer, make_user: UserFactory
) -> None:
    _, op = await make_user("operator")
    printer = await _add_printer(live_client, op, octoprint)
    job = await _submit(live_client, op, printer["id"], 120)
    await wait_for(lambda: _job_in(live_client, op, job["id"], {"running"}), within=30)
    paused = await live_client.post(f"/api/v1/jobs/{job['id']}/pause", headers=op)
    assert paused.status_code == 200, paused.text
    assert paused.json()["state"] == "paused"
    resumed = await live_client.post(f"/api/v1/jobs/{job['id']}/resume", headers=op)
    assert resumed.json()["state"] == "running"
    done = await wait_for(
        lambda: _job_in(live_client, op, job["id"], {"finished", "failed", "cancelled"}), within=90
    )
    assert done["state"] == "finished", done["failure_reason"]
    assert done["progress"]["percent"] == 100.0
    await live_client.post(f"/api/v1/jobs/{job['id']}/clear", json={"outcome": "good"}, headers=op)
    await wait_for(lambda: _state(live_client, op, printer["id"], "idle"), within=30)
    again = await _submit(live_client, op, printer["id"], 200)
    await wait_for(lambda: _job_in(live_client, op, again["id"], {"running"}), within=30)
    cancelled = await live_client.post(f"/api/v1/jobs/{again['id']}/cancel", headers=op)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"


async def test_octoprint_job_survives_our_restart(
    settings: Settings, octoprint: OctoPrintServer, make_user: UserFactory, tmp_path: Path
) -> None:
    live = settings.model_copy(update={"run_supervisors": True, "auto_dispatch": False})
    _, op = await make_user("operator")
    app = create_app(live)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        printer = await _add_printer(c, op, octoprint)
        await wait_for(lambda: _state(c, op, printer["id"], "idle"), within=30)
        job = await _submit(c, op, printer["id"], 160)
        await wait_for(lambda: _job_in(c, op, job["id"], {"running"}), within=30)
    # microfactory is down; OctoPrint keeps printing. On the way back up the job is not
    # failed (as a serial job would be) but followed to its end.
    app2 = create_app(live)
    async with (
        app2.router.lifespan_context(app2),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app2), base_url="http://t") as c,
    ):
        first = await job_json(c, op, job["id"])
        assert first["state"] in ("running", "finished"), first["failure_reason"]
        done = await wait_for(lambda: _job_in(c, op, job["id"], {"finished", "failed"}), within=90)
        assert done["state"] == "finished", done["failure_reason"]
