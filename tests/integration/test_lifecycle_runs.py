"""The job lifecycle against a supervised simulated GRBL mill on a real pty: refused starts,
missing files, and the history a run leaves."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from microfactory.jobs.models import Job
from microfactory.machines.limits import line_stats
from microfactory.usage.models import UsageRecord
from tests.conftest import UserFactory
from tests.integration.conftest import job_json, wait_for
from tests.integration.test_supervised_jobs import CNC_PROGRAM, add_mill

pytestmark = pytest.mark.timeout(120)

# GRBL keeps 80 characters of a line (79 significant): this one is longer.
LONG_PROGRAM = b"G21\nG90\nG1X1." + b"0" * 40 + b"Y2." + b"0" * 40 + b"F600\n"

SNAPSHOT = (
    "state",
    "machine_id",
    "started_at",
    "ended_at",
    "failure_reason",
    "progress",
    "last_acked_line",
    "last_line_text",
)


@pytest.fixture
async def shop(live_client: httpx.AsyncClient, make_user: UserFactory) -> dict[str, Any]:
    """An operator, a simulated GRBL mill, and a manual mill (which takes any program)."""
    _, operator = await make_user("operator")
    mill = await add_mill(live_client, operator)
    manual = await live_client.post(
        "/api/v1/machines",
        json={"name": "Hand mill", "kind": "cnc_mill", "driver": "manual", "connection": {}},
        headers=operator,
    )
    assert manual.status_code == 201, manual.text
    return {"operator": operator, "mill": mill}


async def _submit(
    client: httpx.AsyncClient, headers: dict[str, str], content: bytes
) -> dict[str, Any]:
    resp = await client.post(
        "/api/v1/jobs",
        files={"file": ("part.nc", content, "text/plain")},
        data={"machine_kind": "cnc_mill"},
        headers=headers,
    )
    assert resp.status_code == 201, resp.text
    job = dict(resp.json())
    assert job["state"] == "queued"
    return job


async def _submit_long(
    app: Any, client: httpx.AsyncClient, headers: dict[str, str], *, keep_checks: bool
) -> dict[str, Any]:
    """A queued job whose stored program has a line GRBL refuses.

    Uploads refuse such a program outright, so the job is made from a good one and its file
    is then replaced, as a file changed on disk (or a job from before the checks) would be.
    With `keep_checks` its line statistics describe the long program, so the check at
    assignment sees it; without, only the driver does.
    """
    job = await _submit(client, headers, CNC_PROGRAM)
    async with app.state.sessionmaker() as session, session.begin():
        stored = await session.get(Job, job["id"])
        assert stored is not None
        (app.state.settings.upload_dir / stored.stored_name).write_bytes(LONG_PROGRAM)
        analysis = {k: v for k, v in stored.analysis.items() if k != "line_stats"}
        if keep_checks:
            analysis["line_stats"] = line_stats(LONG_PROGRAM.decode().splitlines())
        stored.analysis = analysis
    return job


async def _usage(app: Any) -> list[UsageRecord]:
    await app.state.events.drain()
    async with app.state.sessionmaker() as session:
        return list((await session.execute(select(UsageRecord))).scalars())


async def test_a_refused_dispatch_leaves_the_job_exactly_as_it_was(
    live_app: Any, live_client: httpx.AsyncClient, shop: dict[str, Any]
) -> None:
    operator, mill = shop["operator"], shop["mill"]
    assert len(LONG_PROGRAM.splitlines()[-1]) > 80  # no spaces: every character counts
    job = await _submit_long(live_app, live_client, operator, keep_checks=True)
    before = await job_json(live_client, operator, job["id"])

    resp = await live_client.post(
        f"/api/v1/jobs/{job['id']}/dispatch", json={"machine_id": mill["id"]}, headers=operator
    )
    assert resp.status_code == 409, resp.text
    assert "GRBL" in resp.json()["detail"]
    assert "line" in resp.json()["detail"]

    after = await job_json(live_client, operator, job["id"])
    assert {k: after[k] for k in SNAPSHOT} == {k: before[k] for k in SNAPSHOT}
    assert after["state"] == "queued"
    assert after["started_at"] is None
    assert after["ended_at"] is None
    assert await _usage(live_app) == []
    # The mill is free for the next job.
    ok = await _submit(live_client, operator, CNC_PROGRAM)
    started = await live_client.post(
        f"/api/v1/jobs/{ok['id']}/dispatch", json={"machine_id": mill["id"]}, headers=operator
    )
    assert started.status_code == 200, started.text


async def test_a_job_whose_file_is_gone_fails_with_that_reason(
    live_app: Any, live_client: httpx.AsyncClient, shop: dict[str, Any]
) -> None:
    operator, mill = shop["operator"], shop["mill"]
    job = await _submit(live_client, operator, CNC_PROGRAM)
    async with live_app.state.sessionmaker() as session:
        stored = await session.get(Job, job["id"])
        assert stored is not None
        path = live_app.state.settings.upload_dir / stored.stored_name
    path.unlink()

    resp = await live_client.post(
        f"/api/v1/jobs/{job['id']}/dispatch", json={"machine_id": mill["id"]}, headers=operator
    )
    assert resp.status_code == 409, resp.text
    assert "missing from storage" in resp.json()["detail"]
    failed = await job_json(live_client, operator, job["id"])
    assert failed["state"] == "failed"  # not assigned forever
    assert "missing from storage" in failed["failure_reason"]
    assert failed["started_at"] is None
    assert await _usage(live_app) == []  # it never ran
    events = (await live_client.get(f"/api/v1/jobs/{job['id']}/events", headers=operator)).json()
    assert [(e["from_state"], e["to_state"], e["actor"]) for e in events][-2:] == [
        ("queued", "assigned", "user"),
        ("assigned", "failed", "machine"),
    ]


async def test_a_run_leaves_its_history_and_one_usage_record(
    live_app: Any, live_client: httpx.AsyncClient, shop: dict[str, Any]
) -> None:
    operator, mill = shop["operator"], shop["mill"]
    job = await _submit(live_client, operator, CNC_PROGRAM)
    resp = await live_client.post(
        f"/api/v1/jobs/{job['id']}/dispatch", json={"machine_id": mill["id"]}, headers=operator
    )
    assert resp.status_code == 200, resp.text

    async def ended() -> dict[str, Any] | None:
        j = await job_json(live_client, operator, job["id"])
        return j if j["state"] in ("finished", "failed") else None

    done = await wait_for(ended, within=90)
    assert done["state"] == "finished", done["failure_reason"]
    events = (await live_client.get(f"/api/v1/jobs/{job['id']}/events", headers=operator)).json()
    assert [(e["from_state"], e["to_state"]) for e in events] == [
        (None, "submitted"),
        ("submitted", "approved"),
        ("approved", "queued"),
        ("queued", "assigned"),
        ("assigned", "running"),
        ("running", "finished"),
    ]
    assert events[-1]["actor"] == "machine"
    assert events[-1]["last_acked_line"] == done["lines_total"]
    usage = await _usage(live_app)
    assert [(u.job_id, u.outcome) for u in usage] == [(job["id"], "finished")]


async def test_a_refusal_by_the_machine_itself_puts_the_job_back_as_it_was(
    live_app: Any, live_client: httpx.AsyncClient, shop: dict[str, Any]
) -> None:
    """The checks before assignment miss nothing GRBL refuses today, so make them blind:
    a job analysed before they existed carries no line statistics, and only the driver
    refuses it, after the assignment committed."""
    operator, mill = shop["operator"], shop["mill"]
    job = await _submit_long(live_app, live_client, operator, keep_checks=False)
    before = await job_json(live_client, operator, job["id"])

    resp = await live_client.post(
        f"/api/v1/jobs/{job['id']}/dispatch", json={"machine_id": mill["id"]}, headers=operator
    )
    assert resp.status_code == 409, resp.text
    assert "refused the job" in resp.json()["detail"]
    assert "GRBL" in resp.json()["detail"]
    after = await job_json(live_client, operator, job["id"])
    assert {k: after[k] for k in SNAPSHOT} == {k: before[k] for k in SNAPSHOT}
    assert "refused" in after["waiting_reason"]
    assert await _usage(live_app) == []
    events = (await live_client.get(f"/api/v1/jobs/{job['id']}/events", headers=operator)).json()
    assert [(e["from_state"], e["to_state"]) for e in events][-2:] == [
        ("queued", "assigned"),
        ("assigned", "queued"),
    ]
