"""A machine's own limits are read at connect, stored on it, and used for its jobs' estimates."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from microfactory.analysis import analyse_gcode, limits_from_dict
from tests.integration.conftest import job_json, shared_file, wait_for
from tests.integration.test_supervised_jobs import add_mill

pytestmark = pytest.mark.timeout(120)


async def _limits(client: httpx.AsyncClient, headers: dict[str, str], machine_id: int) -> Any:
    resp = await client.get(f"/api/v1/machines/{machine_id}", headers=headers)
    return resp.json()["capabilities"].get("motion_limits")


async def test_grbl_limits_are_stored_on_the_machine_and_replan_its_jobs(
    live_client: httpx.AsyncClient, operator: dict[str, str], member: dict[str, str]
) -> None:
    mill = await add_mill(live_client, operator)
    stored = await wait_for(
        lambda: _limits(live_client, operator, mill["id"]), what="the mill's $$ is stored"
    )
    assert stored["source"].startswith("GRBL $$ on ")
    assert stored["read_at"]
    assert stored["max_acceleration"][:3] == [10.0, 10.0, 10.0]  # stock $120-$122
    assert stored["settings"]["$110"] == 500.0

    # A job sent to "any mill" is analysed with default limits, then re-planned with this
    # mill's own when it starts there.
    path = shared_file("gcode", "cnc", "pocket-and-contour.nc")
    defaults = analyse_gcode(path, machine_limits=limits_from_dict({"firmware": "grbl",
                             "max_acceleration": [500, 500, 100, 1000]}))  # fmt: skip
    resp = await live_client.post(
        "/api/v1/jobs",
        files={"file": ("part.nc", path.read_bytes(), "text/plain")},
        data={"machine_kind": "cnc_mill"},
        headers=member,
    )
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert "estimate_for" not in job["analysis"]
    await live_client.post(f"/api/v1/jobs/{job['id']}/approve", headers=operator)
    resp = await live_client.post(
        f"/api/v1/jobs/{job['id']}/dispatch", json={"machine_id": mill["id"]}, headers=operator
    )
    assert resp.status_code == 200, resp.text

    async def replanned() -> dict[str, Any] | None:
        data = await job_json(live_client, operator, job["id"])
        return data if data["analysis"].get("estimate_for") else None

    data = await wait_for(replanned, what="the job is re-planned for the mill")
    expected = analyse_gcode(path, machine_limits=limits_from_dict(stored)).estimated_time_s
    assert data["analysis"]["estimate_for"]["machine_id"] == mill["id"]
    assert data["analysis"]["estimated_time_s"] == pytest.approx(expected, abs=0.01)
    assert data["analysis"]["limits_source"] == "machine_limits"
    assert expected > defaults.estimated_time_s  # 10 mm/s^2 is far slower than 500


async def test_an_operator_override_is_not_replaced_by_the_machine(
    live_client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    mill = await add_mill(live_client, operator)
    await wait_for(lambda: _limits(live_client, operator, mill["id"]), what="$$ stored")
    override = {"firmware": "grbl", "max_acceleration": [800, 800, 200, 1000], "source": "operator"}
    resp = await live_client.patch(
        f"/api/v1/machines/{mill['id']}",
        json={"capabilities": {"motion_limits": override}},
        headers=operator,
    )
    assert resp.status_code == 200, resp.text
    # Re-enabling reconnects the machine, which reads $$ again.
    for enabled in (False, True):
        resp = await live_client.patch(
            f"/api/v1/machines/{mill['id']}", json={"enabled": enabled}, headers=operator
        )
        assert resp.status_code == 200, resp.text
    await wait_for(
        lambda: _state(live_client, operator, mill["id"]) , what="the mill reconnects"
    )  # fmt: skip
    assert await _limits(live_client, operator, mill["id"]) == override


async def _state(client: httpx.AsyncClient, headers: dict[str, str], machine_id: int) -> bool:
    resp = await client.get(f"/api/v1/machines/{machine_id}", headers=headers)
    return bool(resp.json()["status"]["state"] == "idle")


async def test_bad_motion_limits_are_refused(
    live_client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    mill = await add_mill(live_client, operator)
    resp = await live_client.patch(
        f"/api/v1/machines/{mill['id']}",
        json={"capabilities": {"motion_limits": {"max_acceleration": [1, 2]}}},
        headers=operator,
    )
    assert resp.status_code == 422
    assert "four values" in resp.text
