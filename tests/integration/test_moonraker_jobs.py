"""Jobs on a Klipper printer behind the real Moonraker 0.11, driven by a supervisor.

From the queue to `finished` (with Moonraker's file metadata in the analysis, progress on the
machine's status, usage recorded, the bed cleared), pause, resume and cancel through the API,
Klippy shutting down mid-job, Moonraker restarting mid-job, wrong credentials and an upload
Moonraker refuses. Klippy is the emulator (tests/peers/klippy_emulator.py); one Moonraker
serves the whole module, a second one (refusing uploads) only its test.
"""

from __future__ import annotations

import asyncio
import io
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from microfactory.runtime.probe import probe_settings
from microfactory.usage.models import UsageRecord
from tests.conftest import require_or_skip
from tests.integration.conftest import job_json, machine_state, shared_file, wait_for
from tests.peers.moonraker_server import MoonrakerServer, moonraker_python, venv_path

# SQLite only: what is new here is the driver's and Moonraker's side; the supervisor's writes
# are the ones the OctoPrint jobs test on both databases (the module keeps to its budget).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.parametrize("db_url", ["sqlite"], indirect=True),
]

CYLINDER = ("gcode", "fdm", "klipper-cylinder.gcode")


def _server(**options: Any) -> MoonrakerServer:
    python = moonraker_python()
    require_or_skip(python is not None, f"Moonraker is not installed in {venv_path()}")
    assert python is not None
    # A hundred times faster than our planner's time: the cylinder prints in about 2 s.
    return MoonrakerServer(python=python, speed_factor=100.0, **options)


@pytest.fixture(scope="module")
def moonraker_peer() -> Iterator[MoonrakerServer]:
    server = _server()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def moonraker(moonraker_peer: MoonrakerServer) -> MoonrakerServer:
    assert moonraker_peer.klippy is not None
    moonraker_peer.klippy.reset()
    return moonraker_peer


def back_and_forth(moves: int) -> bytes:
    """200 mm moves at 50 mm/s: about 40 ms each on the emulator at speed 100."""
    lines = ["M104 S205", "M140 S60", "G28", *(f"G1 X{(i % 2) * 200} F3000" for i in range(moves))]
    return ("\n".join(lines) + "\n").encode()


async def add_klipper(
    client: httpx.AsyncClient, headers: dict[str, str], url: str, **connection: Any
) -> dict[str, Any]:
    resp = await client.post(
        "/api/v1/machines",
        json={
            "name": "Voron",
            "kind": "fdm_printer",
            "driver": "moonraker",
            "connection": {"url": url, "timeout_s": 5, "max_backoff_s": 1, **connection},
            "build_volume_mm": {"x": 220, "y": 220, "z": 250},
            "capabilities": {"loaded_material": "PLA"},
        },
        headers=headers,
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def machine(client: httpx.AsyncClient, headers: dict[str, str], machine_id: int) -> Any:
    return (await client.get(f"/api/v1/machines/{machine_id}", headers=headers)).json()


async def idle(client: httpx.AsyncClient, headers: dict[str, str], machine_id: int) -> bool:
    return await machine_state(client, headers, machine_id) == "idle"


async def submit(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    machine_id: int,
    content: bytes,
    name: str = "part.gcode",
) -> dict[str, Any]:
    resp = await client.post(
        "/api/v1/jobs",
        files={"file": (name, content, "text/plain")},
        data={"machine_id": str(machine_id)},
        headers=headers,
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def ended(client: httpx.AsyncClient, headers: dict[str, str], job_id: int) -> Any:
    job = await job_json(client, headers, job_id)
    return job if job["state"] in ("finished", "failed", "cancelled") else None


async def running(client: httpx.AsyncClient, headers: dict[str, str], job_id: int) -> Any:
    job = await job_json(client, headers, job_id)
    return job if job["state"] == "running" else None


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", io.BytesIO(data[16:24]).read())
    return width, height


async def test_a_job_from_the_queue_finishes_with_moonrakers_metadata_and_usage(
    live_client: httpx.AsyncClient,
    live_app: Any,
    operator: dict[str, str],
    member: dict[str, str],
    moonraker: MoonrakerServer,
) -> None:
    client = live_client
    printer = await add_klipper(client, operator, moonraker.url)
    await wait_for(lambda: idle(client, operator, printer["id"]), what="the printer connects")
    status = (await machine(client, operator, printer["id"]))["status"]
    assert status["extra"]["klippy_state"] == "ready"
    assert status["temperatures"]["T"]["actual"] == 21.0
    # Klipper's start macros and extended commands pass the program checks.
    job = await submit(client, member, printer["id"], shared_file(*CYLINDER).read_bytes())
    assert job["analysis"]["thumbnails"] == []  # its only thumbnail is QOI: not ours to show
    assert (await client.post(f"/api/v1/jobs/{job['id']}/approve", headers=operator)).is_success
    dispatched = await client.post(f"/api/v1/jobs/{job['id']}/dispatch", headers=operator)
    assert dispatched.status_code == 200, dispatched.text

    async def printing_with_progress() -> Any:
        live = (await machine(client, operator, printer["id"]))["status"]
        progress = live.get("progress") or {}
        return live if live["state"] == "running" and progress.get("percent", 0) > 0 else None

    live = await wait_for(printing_with_progress, within=30, what="progress on the machine")
    assert live["job_id"] == job["id"]
    assert live["extra"]["print_state"] == "printing"
    assert live["temperatures"]["T"]["target"] == 215  # the file's own M104/M109
    done = await wait_for(lambda: ended(client, member, job["id"]), within=60)
    assert done["state"] == "finished", done["failure_reason"]
    assert done["progress"]["percent"] == 100.0

    # Moonraker's reading of the file is in the analysis; its PNG of the QOI is shown.
    async def with_metadata() -> Any:
        current = await job_json(client, member, job["id"])
        return current if current["analysis"].get("printer_metadata") else None

    analysed = (await wait_for(with_metadata, within=10))["analysis"]
    meta = analysed["printer_metadata"]
    assert meta["source"] == "moonraker"
    assert meta["estimated_time_s"] == 268.0  # PrusaSlicer's "4m 28s"
    assert meta["filament_mm"] == pytest.approx(238.52)
    assert meta["filament_g"] == pytest.approx(0.71)
    assert meta["slicer"] == "PrusaSlicer"
    assert meta["layer_height_mm"] == 0.2
    assert meta["object_height_mm"] == pytest.approx(6.0, abs=0.2)
    assert {(t["width"], t["height"]) for t in meta["thumbnails"]} == {(64, 64), (32, 32)}
    assert analysed["slicer_estimated_time_s"] == 268.0
    assert analysed["thumbnails"] == [{"width": 64, "height": 64, "source": "printer"}]
    thumb = await client.get(f"/api/v1/jobs/{job['id']}/thumbnail", headers=member)
    assert thumb.status_code == 200, thumb.text
    assert png_size(thumb.content) == (64, 64)

    await live_app.state.events.drain()
    async with live_app.state.sessionmaker() as session:
        usage = list((await session.execute(select(UsageRecord))).scalars())
    assert [(u.job_id, u.outcome, u.material_kind) for u in usage] == [
        (job["id"], "finished", "PLA")
    ]
    assert usage[0].active_s > 0
    assert usage[0].material_g == pytest.approx(0.71, abs=0.01)

    # Held until the bed is cleared, then the next job runs.
    second = await submit(client, operator, printer["id"], back_and_forth(2))
    held = await client.post(f"/api/v1/jobs/{second['id']}/dispatch", headers=operator)
    assert held.status_code == 409
    assert "cleared" in held.json()["detail"]
    cleared = await client.post(
        f"/api/v1/jobs/{job['id']}/clear", json={"outcome": "good"}, headers=member
    )
    assert cleared.json()["state"] == "cleared"
    assert (await client.post(f"/api/v1/jobs/{second['id']}/dispatch", headers=operator)).is_success
    again = await wait_for(lambda: ended(client, operator, second["id"]), within=30)
    assert again["state"] == "finished", again["failure_reason"]


async def test_pause_resume_and_cancel_through_the_api(
    live_client: httpx.AsyncClient, operator: dict[str, str], moonraker: MoonrakerServer
) -> None:
    client = live_client
    printer = await add_klipper(client, operator, moonraker.url)
    await wait_for(lambda: idle(client, operator, printer["id"]))
    job = await submit(client, operator, printer["id"], back_and_forth(2000))  # 80 s
    assert (await client.post(f"/api/v1/jobs/{job['id']}/dispatch", headers=operator)).is_success
    await wait_for(lambda: running(client, operator, job["id"]), within=30)
    paused = await client.post(f"/api/v1/jobs/{job['id']}/pause", headers=operator)
    assert paused.status_code == 200, paused.text
    assert paused.json()["state"] == "paused"
    assert moonraker.klippy is not None
    assert moonraker.klippy.print_state == "paused"
    at_pause = moonraker.klippy.done
    await asyncio.sleep(0.3)
    assert moonraker.klippy.done == at_pause  # nothing runs while paused
    resumed = await client.post(f"/api/v1/jobs/{job['id']}/resume", headers=operator)
    assert resumed.json()["state"] == "running"
    await wait_for(lambda: moonraker.klippy is not None and moonraker.klippy.done > at_pause)
    cancelled = await client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=operator)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert moonraker.klippy.print_state == "cancelled"
    await wait_for(lambda: idle(client, operator, printer["id"]))


async def test_klippy_shutting_down_mid_job_fails_it_with_klippys_message(
    live_client: httpx.AsyncClient, operator: dict[str, str], moonraker: MoonrakerServer
) -> None:
    client = live_client
    assert moonraker.klippy is not None
    printer = await add_klipper(client, operator, moonraker.url)
    await wait_for(lambda: idle(client, operator, printer["id"]))
    job = await submit(client, operator, printer["id"], back_and_forth(2000))
    assert (await client.post(f"/api/v1/jobs/{job['id']}/dispatch", headers=operator)).is_success
    await wait_for(lambda: running(client, operator, job["id"]), within=30)
    moonraker.klippy.shutdown("Heater extruder not heating at expected rate")
    done = await wait_for(lambda: ended(client, operator, job["id"]), within=30)
    assert done["state"] == "failed"
    assert done["failure_reason"].startswith(
        "Klippy shutdown: Heater extruder not heating at expected rate"
    )
    status = (await machine(client, operator, printer["id"]))["status"]
    assert status["state"] == "error"
    assert "Heater extruder not heating" in status["message"]
    # The operator restarts the firmware (FIRMWARE_RESTART), clears the bed, prints again.
    reset = await client.post(f"/api/v1/machines/{printer['id']}/reset", headers=operator)
    assert reset.status_code == 200, reset.text
    assert "FIRMWARE_RESTART" in reset.json()["message"]
    await wait_for(lambda: idle(client, operator, printer["id"]))
    await client.post(f"/api/v1/jobs/{job['id']}/clear", json={"outcome": "bad"}, headers=operator)


async def test_a_moonraker_restart_mid_job_is_survived(
    live_client: httpx.AsyncClient, operator: dict[str, str], moonraker: MoonrakerServer
) -> None:
    client = live_client
    printer = await add_klipper(client, operator, moonraker.url)
    await wait_for(lambda: idle(client, operator, printer["id"]))
    job = await submit(client, operator, printer["id"], back_and_forth(100))  # about 4 s
    assert (await client.post(f"/api/v1/jobs/{job['id']}/dispatch", headers=operator)).is_success
    await wait_for(lambda: running(client, operator, job["id"]), within=30)
    await asyncio.to_thread(moonraker.stop_moonraker)  # the app's loop runs on meanwhile

    async def offline() -> Any:
        live = (await machine(client, operator, printer["id"]))["status"]
        return live if live["state"] == "offline" else None

    gone = await wait_for(offline, within=10)
    assert "websocket" in gone["message"]
    assert (await job_json(client, operator, job["id"]))["state"] == "running"
    await asyncio.to_thread(moonraker.start_moonraker)
    done = await wait_for(lambda: ended(client, operator, job["id"]), within=60)
    assert done["state"] == "finished", done["failure_reason"]
    assert done["progress"]["percent"] == 100.0


async def test_wrong_credentials_give_a_clear_error(
    live_client: httpx.AsyncClient, operator: dict[str, str], moonraker: MoonrakerServer
) -> None:
    client = live_client
    wrong = {"url": moonraker.url, "api_key": "not-the-right-key-0123"}
    probe = await probe_settings("moonraker", wrong, timeout_s=10)
    assert not probe.ok
    assert "HTTP 401" in probe.message
    assert "api_key" in probe.message
    assert "not-the-right-key-0123" not in probe.message
    printer = await add_klipper(client, operator, moonraker.url, api_key=wrong["api_key"])

    async def refused() -> Any:
        live = (await machine(client, operator, printer["id"]))["status"]
        return live if "HTTP 401" in live["message"] else None

    live = await wait_for(refused, within=15)
    assert live["state"] == "offline"
    assert "set the machine's api_key" in live["message"]
    assert "not-the-right-key-0123" not in live["message"]


async def test_an_upload_moonraker_refuses_fails_the_job_and_nothing_prints(
    live_client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    # Klippy says it is installed in the gcodes folder: Moonraker reserves it, and refuses
    # every upload there (HTTP 403), as a printer set up that way does.
    refusing = _server(klipper_in_gcodes=True)
    await asyncio.to_thread(refusing.start)
    try:
        client = live_client
        printer = await add_klipper(client, operator, refusing.url)
        await wait_for(lambda: idle(client, operator, printer["id"]))
        job = await submit(client, operator, printer["id"], back_and_forth(5))
        resp = await client.post(f"/api/v1/jobs/{job['id']}/dispatch", headers=operator)
        assert resp.status_code == 409
        done = await job_json(client, operator, job["id"])
        assert done["state"] == "failed"
        reason = done["failure_reason"]
        assert reason.startswith("the machine refused the program, nothing was printed: ")
        assert "HTTP 403" in reason
        assert "forbidden by reserved path 'klipper'" in reason
        assert resp.json()["detail"].endswith(reason)
        assert refusing.klippy is not None
        assert not any(
            "SDCARD_PRINT_FILE" in str((r.get("params") or {}).get("script", ""))
            for r in refusing.klippy.received
        )
        assert refusing.klippy.print_state == "standby"
        assert await idle(client, operator, printer["id"])
    finally:
        await asyncio.to_thread(refusing.stop)
