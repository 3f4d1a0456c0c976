"""The whole pipeline: OKH import -> parameters -> OpenSCAD -> PrusaSlicer -> queue -> matcher
-> a sim-marlin printer -> finished -> bed cleared -> usage recorded. Real CLIs, real pty."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from microfactory.config import Settings
from microfactory.usage.models import UsageRecord
from tests.conftest import require_or_skip
from tests.integration.conftest import job_json, machine_state, shared_file, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def live_settings(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Supervisors, the preparer and the queue all running (auto dispatch on).

    The data directory is the relative `data`, as in the demo: the tools run in the job's
    work folder, so they must be given absolute paths.
    """
    monkeypatch.chdir(tmp_path)
    fields = settings.model_dump(exclude={"data_dir"})
    live = Settings(
        **fields
        | {"data_dir": "data", "run_supervisors": True, "auto_dispatch": True,
           "queue_interval_s": 0.5}
    )  # fmt: skip
    assert live.data_dir == tmp_path / "data"  # resolved once, at startup
    return live


async def test_design_to_finished_print(
    live_client: httpx.AsyncClient, live_app: Any, operator: dict[str, str], member: dict[str, str]
) -> None:
    require_or_skip(shutil.which("openscad") is not None, "openscad is not installed")
    require_or_skip(shutil.which("prusa-slicer") is not None, "prusa-slicer is not installed")
    client = live_client
    printer = (
        await client.post(
            "/api/v1/machines",
            json={
                "name": "Sim MK3",
                "kind": "fdm_printer",
                "driver": "sim-marlin",
                "connection": {"speed_factor": 0, "baud": 0},
                "build_volume_mm": {"x": 220, "y": 220, "z": 250},
                "capabilities": {
                    "nozzle_diameter_mm": 0.4,
                    "materials": ["PLA"],
                    "loaded_material": "PLA",
                    "max_hotend_c": 280,
                    "max_bed_c": 110,
                },
            },
            headers=operator,
        )
    ).json()
    await wait_for(lambda: _state(client, operator, printer["id"], "idle"), within=30)

    bracket = shared_file("designs", "l-bracket")
    files = [
        ("files", (name, (bracket / name).read_bytes(), "application/octet-stream"))
        for name in ("okh.yml", "l-bracket.scad", "l-bracket.stl")
    ]
    imported = await client.post("/api/v1/designs/import", files=files, headers=operator)
    assert imported.status_code == 201, imported.text
    design = imported.json()
    scad = next(f for f in design["files"] if f["name"].endswith(".scad"))

    params = (await client.get(f"/api/v1/designs/{design['id']}/parameters", headers=member)).json()
    assert "width" in str(params)
    too_wide = await client.post(
        "/api/v1/jobs",
        json={"design_id": design["id"], "file_id": scad["id"], "parameters": {"width": 500}},
        headers=member,
    )
    assert too_wide.status_code == 422
    assert "width" in too_wide.json()["detail"]

    created = await client.post(
        "/api/v1/jobs",
        json={"design_id": design["id"], "file_id": scad["id"], "parameters": {"width": 30}},
        headers=member,
    )
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["state"] == "submitted"
    assert job["attribution"]["licence"] == design["licence"]
    assert job["attribution"]["content_hash"] == design["content_hash"]
    assert job["parameters"]["width"] == 30

    approved = await client.post(f"/api/v1/jobs/{job['id']}/approve", headers=operator)
    assert approved.status_code == 200

    done = await wait_for(
        lambda: _job_in(client, operator, job["id"], {"finished", "failed"}), within=240
    )
    assert done["state"] == "finished", (done["failure_reason"], done["preparation_log"])
    assert done["machine_id"] == printer["id"]
    assert done["preparation"] == "ready"
    analysis = done["analysis"]
    assert analysis["process"] == "fdm"
    # The width parameter reached the G-code: the part is 30 mm wide (plus skirt/brim).
    extents = sorted(
        [
            analysis["bbox_mm"]["max_x"] - analysis["bbox_mm"]["min_x"],
            analysis["bbox_mm"]["max_y"] - analysis["bbox_mm"]["min_y"],
        ]
    )
    assert 29.0 <= extents[0] <= 45.0
    assert done["progress"]["percent"] == 100.0

    cleared = await client.post(
        f"/api/v1/jobs/{job['id']}/clear", json={"outcome": "good"}, headers=member
    )
    assert cleared.json()["state"] == "cleared"
    await live_app.state.events.drain()  # usage is recorded by a subscriber, after the commit
    async with live_app.state.sessionmaker() as session:
        usage = list((await session.execute(select(UsageRecord))).scalars())
    assert [(u.job_id, u.outcome, u.material_kind) for u in usage] == [
        (job["id"], "finished", "PLA")
    ]
    assert usage[0].material_g is not None
    assert usage[0].material_g > 0


async def test_a_tool_failure_is_shown_on_the_job(
    live_client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    require_or_skip(shutil.which("openscad") is not None, "openscad is not installed")
    client = live_client
    await client.post(
        "/api/v1/machines",
        json={
            "name": "Sim MK3",
            "kind": "fdm_printer",
            "driver": "sim-marlin",
            "connection": {"speed_factor": 0, "baud": 0},
            "build_volume_mm": {"x": 220, "y": 220, "z": 250},
            "capabilities": {"nozzle_diameter_mm": 0.4, "loaded_material": "PLA"},
        },
        headers=operator,
    )
    broken = b"width = 10; // [1:20]\ncube([width, 10, 10]\n"  # a missing parenthesis
    design = await client.post(
        "/api/v1/designs",
        files=[("files", ("broken.scad", broken, "text/plain"))],
        data={"title": "Broken", "licence": "CC0-1.0"},
        headers=operator,
    )
    assert design.status_code == 201, design.text
    job = (
        await client.post("/api/v1/jobs", json={"design_id": design.json()["id"]}, headers=operator)
    ).json()
    failed = await wait_for(lambda: _job_in(client, operator, job["id"], {"failed"}), within=120)
    assert failed["preparation"] == "failed"
    assert "could not make G-code" in failed["failure_reason"]
    assert (
        "syntax" in failed["preparation_log"].lower()
        or "error" in failed["preparation_log"].lower()
    )


async def _state(
    client: httpx.AsyncClient, headers: dict[str, str], machine_id: int, state: str
) -> bool:
    return await machine_state(client, headers, machine_id) == state


async def _job_in(
    client: httpx.AsyncClient, headers: dict[str, str], job_id: int, states: set[str]
) -> dict[str, Any] | None:
    job = await job_json(client, headers, job_id)
    return job if job["state"] in states else None
