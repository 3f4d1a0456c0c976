"""Operator controls on the machine page: reset after an emergency stop, jog, home, preheat,
and the temperature history, against the simulators on real ptys."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def wait_for(check: Callable[[], Any], within: float = 30.0, what: str = "") -> Any:
    async with asyncio.timeout(within):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(0.1)


async def status_of(client: httpx.AsyncClient, headers: dict[str, str], mid: int) -> dict[str, Any]:
    resp = await client.get(f"/api/v1/machines/{mid}", headers=headers)
    assert resp.status_code == 200, resp.text
    return dict(resp.json()["status"])


async def add_machine(
    client: httpx.AsyncClient, headers: dict[str, str], **body: Any
) -> dict[str, Any]:
    resp = await client.post("/api/v1/machines", json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    machine = dict(resp.json())

    async def idle() -> bool:
        return (await status_of(client, headers, machine["id"]))["state"] == "idle"

    await wait_for(idle, what=f"{body['driver']} connects")
    return machine


async def test_reset_after_an_emergency_stop_on_marlin_and_grbl(
    live_client: httpx.AsyncClient,
    live_app: Any,
    operator: dict[str, str],
    member: dict[str, str],
) -> None:
    """One app and one pair of users for both simulators (their setup is most of the cost)."""
    mid = await marlin_reset_after_emergency_stop_preheat_and_history(live_client, operator, member)
    await marlin_reset_after_a_firmware_halt(live_client, live_app, operator, mid)
    me = await live_client.get("/api/v1/users/me", headers=operator)
    await grbl_jog_refused_during_a_job_then_reset_after_emergency_stop(
        live_client, operator, member, me.json()["username"]
    )


async def marlin_reset_after_emergency_stop_preheat_and_history(
    live_client: httpx.AsyncClient, operator: dict[str, str], member: dict[str, str]
) -> int:
    printer = await add_machine(
        live_client, operator, name="Printer", kind="fdm_printer", driver="sim-marlin",
        connection={"speed_factor": 50},
    )  # fmt: skip
    mid = printer["id"]
    api = f"/api/v1/machines/{mid}"

    preheat = await live_client.post(f"{api}/preheat", json={"preset": "PLA"}, headers=operator)
    assert preheat.status_code == 200, preheat.text
    assert [r["line"] for r in preheat.json()["results"]] == ["M104 S200", "M140 S60"]

    async def hotend_target() -> bool:
        temps = (await status_of(live_client, operator, mid))["temperatures"]
        return temps.get("T", {}).get("target") == 200.0

    await wait_for(hotend_target, what="the preheat target is reported")
    bad = await live_client.post(f"{api}/preheat", json={"preset": "nylon"}, headers=operator)
    assert bad.status_code == 422
    assert "pla, petg, abs, off" in bad.json()["detail"]

    # A fresh page finds the recent temperatures, for members too.
    history = await live_client.get(f"{api}/temperatures", headers=member)
    assert history.status_code == 200
    samples = history.json()
    assert samples
    assert set(samples[-1]["temps"]) >= {"T", "B"}
    assert all(a["t"] < b["t"] for a, b in itertools.pairwise(samples))

    # The machine page: members get the graph with that history, and no controls.
    cookie = {"Cookie": f"mf_session={member['Authorization'].removeprefix('Bearer ')}"}
    page = await live_client.get(f"/machines/{mid}", headers=cookie)
    assert page.status_code == 200
    assert 'id="temp-graph"' in page.text
    assert '"temps": {"B": [' in page.text or '"temps": {"T": [' in page.text
    assert "data-terminal" not in page.text
    assert "Reset and reconnect" not in page.text

    stop = await live_client.post(f"{api}/emergency-stop", headers=operator)
    assert stop.status_code == 200, stop.text

    async def in_error() -> bool:
        return (await status_of(live_client, operator, mid))["state"] == "error"

    await wait_for(in_error, what="the halt is reported")
    halted = await live_client.post(f"{api}/commands", json={"lines": ["M115"]}, headers=operator)
    assert halted.json()["results"][0]["ok"] is False
    assert "halted" in halted.json()["results"][0]["error"]

    refused = await live_client.post(f"{api}/reset", headers=member)
    assert refused.status_code == 403
    reset = await live_client.post(f"{api}/reset", headers=operator)
    assert reset.status_code == 200, reset.text
    assert reset.json()["status"]["state"] == "idle"
    assert "reset" in reset.json()["message"]
    again = await live_client.post(f"{api}/commands", json={"lines": ["M115"]}, headers=operator)
    reply = again.json()["results"][0]
    assert reply["ok"] is True
    assert any("FIRMWARE_NAME" in line for line in reply["reply"])

    jog = await live_client.post(f"{api}/jog", json={"x": 5, "y": -2}, headers=operator)
    assert jog.status_code == 200, jog.text
    assert [r["line"] for r in jog.json()["results"]][:3] == ["G91", "G0 X5 Y-2 F3000", "G90"]
    home = await live_client.post(f"{api}/home", json={}, headers=operator)
    assert home.status_code == 200, home.text
    nothing = await live_client.post(f"{api}/jog", json={}, headers=operator)
    assert nothing.status_code == 422
    far = await live_client.post(f"{api}/jog", json={"x": 500}, headers=operator)
    assert far.status_code == 422
    return int(mid)


async def marlin_reset_after_a_firmware_halt(
    live_client: httpx.AsyncClient, live_app: Any, operator: dict[str, str], mid: int
) -> None:
    """A thermal runaway kills the firmware as M112 does; the same reset recovers it."""
    driver = live_app.state.fleet.supervisors[mid].driver
    driver.simulator.fault("thermal_runaway")

    async def halted() -> str | None:
        st = await status_of(live_client, operator, mid)
        return str(st["message"]) if st["state"] == "error" else None

    message = await wait_for(halted, what="the thermal runaway halts the printer")
    assert "Thermal Runaway" in message
    reset = await live_client.post(f"/api/v1/machines/{mid}/reset", headers=operator)
    assert reset.status_code == 200, reset.text
    assert reset.json()["status"]["state"] == "idle"


LONG_CNC = b"G21\nG90\nG1 F600\n" + b"".join(
    f"G1 X{(i % 2) * 50} Y{i % 50}\n".encode() for i in range(200)
)


async def grbl_jog_refused_during_a_job_then_reset_after_emergency_stop(
    live_client: httpx.AsyncClient,
    operator: dict[str, str],
    member: dict[str, str],
    operator_name: str,
) -> None:
    mill = await add_machine(
        live_client, operator, name="Mill", kind="cnc_mill", driver="sim-grbl",
        connection={"speed_factor": 1}, build_volume_mm={"x": 300, "y": 300, "z": 60},
    )  # fmt: skip
    mid = mill["id"]
    api = f"/api/v1/machines/{mid}"
    job = (
        await live_client.post(
            "/api/v1/jobs",
            files={"file": ("long.nc", LONG_CNC, "text/plain")},
            data={"machine_id": str(mid)},
            headers=member,
        )
    ).json()
    await live_client.post(f"/api/v1/jobs/{job['id']}/approve", headers=operator)
    started = await live_client.post(f"/api/v1/jobs/{job['id']}/dispatch", headers=operator)
    assert started.status_code == 200, started.text

    for path, body in (("jog", {"x": 1}), ("home", {}), ("reset", None)):
        refused = await live_client.post(f"{api}/{path}", json=body, headers=operator)
        assert refused.status_code == 409, refused.text
        assert f"running job {job['id']}" in refused.json()["detail"]
    wrong = await live_client.post(f"{api}/preheat", json={"preset": "pla"}, headers=operator)
    assert wrong.status_code == 409
    assert "no heaters" in wrong.json()["detail"]

    stop = await live_client.post(f"{api}/emergency-stop", headers=operator)
    assert stop.status_code == 200, stop.text

    async def in_error() -> bool:  # ALARM:3, reset while moving: locked
        return (await status_of(live_client, operator, mid))["state"] == "error"

    await wait_for(in_error, what="the alarm is reported")

    async def ended() -> dict[str, Any] | None:
        got = (await live_client.get(f"/api/v1/jobs/{job['id']}", headers=operator)).json()
        return got if got["state"] not in ("running", "paused") else None

    stopped = await wait_for(ended, what="the job ends")
    # As on Marlin and OctoPrint: failed, naming who pressed the stop.
    assert stopped["state"] == "failed"
    assert stopped["failure_reason"].startswith(f"emergency stop by {operator_name} (last ")
    locked = await live_client.post(f"{api}/jog", json={"x": 1}, headers=operator)
    assert locked.status_code == 409  # GRBL refuses a jog in an alarm (error:9)
    assert "error" in locked.json()["detail"].lower()

    reset = await live_client.post(f"{api}/reset", headers=operator)
    assert reset.status_code == 200, reset.text
    assert "position is lost" in reset.json()["message"]
    assert reset.json()["status"]["state"] == "idle"
    before = (await status_of(live_client, operator, mid))["machine_position"]
    jog = await live_client.post(f"{api}/jog", json={"x": 2, "feed_mm_min": 500}, headers=operator)
    assert jog.status_code == 200, jog.text
    assert jog.json()["results"][0]["line"] == "$J=G91 G21 X2 F500"

    async def moved() -> bool:
        st = await status_of(live_client, operator, mid)
        return st["state"] == "idle" and abs(st["machine_position"]["X"] - before["X"] - 2) < 0.01

    await wait_for(moved, what="the jog moves X by 2 mm")
