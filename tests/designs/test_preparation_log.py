"""A design that a tool cannot turn into G-code: the job says why, and so does the server log."""

from __future__ import annotations

import asyncio
import logging
import shutil
from typing import Any

import httpx
import pytest

from tests.conftest import require_or_skip
from tests.designs.conftest import post_design

# Valid Customizer syntax, but OpenSCAD stops on the undefined module with an error.
BROKEN_SCAD = b"width = 20; // [10:1:60]\nno_such_module(width);\nundefined_call(;\n"


@pytest.mark.slow
async def test_a_tool_failure_is_shown_on_the_job_and_logged_with_its_output(
    client: httpx.AsyncClient,
    member: dict[str, str],
    operator: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    require_or_skip(shutil.which("openscad") is not None, "openscad is not installed")
    await client.post(
        "/api/v1/machines",
        json={"name": "Printer", "kind": "fdm_printer", "driver": "marlin",
              "connection": {"port": "/dev/ttyACM0"},
              "build_volume_mm": {"x": 200, "y": 200, "z": 200},
              "capabilities": {"nozzle_diameter_mm": 0.4, "loaded_material": "PLA"}},
        headers=operator,
    )  # fmt: skip
    design = (await post_design(client, member, [("box.scad", BROKEN_SCAD)])).json()
    caplog.set_level(logging.WARNING, logger="microfactory")
    created = await client.post(
        "/api/v1/jobs", json={"design_id": design["id"], "machine_kind": "fdm_printer"},
        headers=member,
    )  # fmt: skip
    assert created.status_code == 201, created.text
    job: dict[str, Any] = created.json()
    for _ in range(600):
        job = (await client.get(f"/api/v1/jobs/{job['id']}", headers=member)).json()
        if job["preparation"] not in ("pending", "running"):
            break
        await asyncio.sleep(0.1)
    assert job["preparation"] == "failed"
    assert "OpenSCAD failed" in job["preparation_log"]
    records = [r for r in caplog.records if r.levelno == logging.WARNING]
    logged = "\n".join(r.getMessage() for r in records)
    assert f"preparing job {job['id']} failed (openscad)" in logged
    assert "ERROR" in logged  # OpenSCAD's own last stderr lines are in the log
