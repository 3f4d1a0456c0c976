"""OctoPrint restarts mid-job: the job ends with a clear reason, and nothing is lost.

The printer is OctoPrint's VirtualPrinter, inside the OctoPrint process, so a restart of
OctoPrint ends its print: the job cannot continue and must fail saying so, with its usage
recorded and its history complete. The machine comes back when OctoPrint does, held until
the bed is cleared, and then runs the next job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select

from microfactory.jobs.models import JobEvent
from microfactory.usage.models import UsageRecord
from tests.conftest import UserFactory, require_or_skip
from tests.integration.conftest import job_json, wait_for
from tests.integration.test_octoprint_jobs import _add_printer, _job_in, _state, _submit
from tests.peers.octoprint_server import OctoPrintServer, octoprint_executable, running_octoprint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def octoprint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OctoPrintServer]:
    require_or_skip(octoprint_executable() is not None, "OctoPrint's venv is not installed")
    with running_octoprint(tmp_path_factory.mktemp("octoprint-restart")) as server:
        yield server


async def test_a_job_fails_with_its_reason_when_octoprint_restarts_mid_print(
    live_client: httpx.AsyncClient,
    live_app: object,
    octoprint: OctoPrintServer,
    make_user: UserFactory,
) -> None:
    client = live_client
    _, op = await make_user("operator")
    printer = await _add_printer(client, op, octoprint)
    # Back and forth, 0.5 mm at F60: about 0.05 s a move, 100 s in all.
    moves = "\n".join(("G1 X0.5 F60", "G1 X-0.5 F60") * 1000)
    upload = await client.post(
        "/api/v1/jobs",
        files={"file": ("long.gcode", f"G28\nG91\n{moves}\nG90\n".encode(), "text/plain")},
        data={"machine_id": str(printer["id"])},
        headers=op,
    )
    assert upload.status_code == 201, upload.text
    job = upload.json()
    dispatched = await client.post(f"/api/v1/jobs/{job['id']}/dispatch", headers=op)
    assert dispatched.status_code == 200, dispatched.text

    async def printing() -> bool:
        j = await job_json(client, op, job["id"])
        return j["state"] == "running" and (j["progress"].get("lines_acked") or 0) > 0

    await wait_for(printing, within=60, what="the print to start")
    await asyncio.to_thread(octoprint.restart)  # the app's loop runs on meanwhile

    done = await wait_for(
        lambda: _job_in(client, op, job["id"], {"finished", "failed", "cancelled"}),
        within=120,
        what="the job to end",
    )
    assert done["state"] == "failed", done
    reason = done["failure_reason"]
    assert reason, done
    assert any(w in reason.lower() for w in ("octoprint", "disconnect", "no longer printing")), (
        reason
    )
    assert done["last_acked_line"] is not None
    assert done["last_acked_line"] < done["lines_total"]

    await live_app.state.events.drain()  # type: ignore[attr-defined]
    async with live_app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        usage = list((await session.execute(select(UsageRecord))).scalars())
        events = list(
            (
                await session.execute(
                    select(JobEvent).where(JobEvent.job_id == job["id"]).order_by(JobEvent.id)
                )
            ).scalars()
        )
    assert [(u.job_id, u.outcome) for u in usage] == [(job["id"], "failed")]
    assert [e.to_state.value for e in events][-2:] == ["running", "failed"]
    assert events[-1].reason == reason

    # OctoPrint is back: the machine reconnects, is held until cleared, then prints again.
    await wait_for(lambda: _state(client, op, printer["id"], "idle"), within=90)
    cleared = await client.post(
        f"/api/v1/jobs/{job['id']}/clear", json={"outcome": "bad"}, headers=op
    )
    assert cleared.status_code == 200, cleared.text
    again = await _submit(client, op, printer["id"], 20)
    finished = await wait_for(
        lambda: _job_in(client, op, again["id"], {"finished", "failed"}), within=90
    )
    assert finished["state"] == "finished", finished["failure_reason"]
