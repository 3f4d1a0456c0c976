"""Uploaded files do not pile up: retention of old jobs' files and a per-member quota."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from microfactory.config import Settings
from microfactory.db import utcnow
from microfactory.jobs.models import Job, JobState
from microfactory.retention import purge_job_files
from microfactory.scheduler import run_tick
from tests.conftest import UserFactory

GCODE = b"; test\nG28\nG1 X10 Y10 F3000\nG1 X20 Y20 E1 F1200\n" + b"; padding\n" * 150


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"member_storage_quota_bytes": 3 * len(GCODE) + 100, "job_file_retention_days": 30}
    )


@pytest.fixture(autouse=True)
async def printer(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    _, staff = await make_user("operator", username="setup")
    body = {
        "name": "Printer",
        "kind": "fdm_printer",
        "driver": "marlin",
        "connection": {"port": "/dev/ttyACM0"},
        "build_volume_mm": {"x": 220, "y": 220, "z": 250},
    }
    assert (await client.post("/api/v1/machines", json=body, headers=staff)).status_code == 201


async def upload(client: httpx.AsyncClient, headers: dict[str, str], name: str) -> httpx.Response:
    return await client.post(
        "/api/v1/jobs",
        files={"file": (name, GCODE, "text/x-gcode")},
        data={"machine_kind": "fdm_printer"},
        headers=headers,
    )


def stored_files(settings: Settings) -> set[str]:
    return {p.name for p in Path(settings.upload_dir).glob("*.gcode")}


async def test_an_upload_past_the_members_quota_is_refused_and_not_kept(
    client: httpx.AsyncClient, member: dict[str, str], settings: Settings
) -> None:
    for n in range(3):
        assert (await upload(client, member, f"part{n}.gcode")).status_code == 201
    before = stored_files(settings)
    refused = await upload(client, member, "one-too-many.gcode")
    assert refused.status_code == 413
    assert "storage quota" in refused.json()["detail"]
    assert "cancel or clear old jobs" in refused.json()["detail"]
    assert stored_files(settings) == before  # the refused file was not left on disk


async def test_the_quota_is_per_member(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    _, maria = await make_user("member")
    _, otto = await make_user("member")
    for n in range(3):
        assert (await upload(client, maria, f"m{n}.gcode")).status_code == 201
    assert (await upload(client, otto, "o.gcode")).status_code == 201


async def test_files_of_jobs_that_ended_before_the_retention_window_are_deleted(
    app: Any, client: httpx.AsyncClient, member: dict[str, str], settings: Settings
) -> None:
    old = (await upload(client, member, "old.gcode")).json()
    recent = (await upload(client, member, "recent.gcode")).json()
    live = (await upload(client, member, "live.gcode")).json()
    for job in (old, recent):
        resp = await client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=member)
        assert resp.status_code == 200, resp.text
    async with app.state.sessionmaker() as session:
        jobs = {j.id: j for j in (await session.execute(select(Job))).scalars()}
        jobs[old["id"]].ended_at = utcnow() - dt.timedelta(days=31)
        names = {key: jobs[j["id"]].stored_name for key, j in
                 (("old", old), ("recent", recent), ("live", live))}  # fmt: skip
        await session.commit()
    assert set(names.values()) <= stored_files(settings)
    # The member is at the quota now...
    assert (await upload(client, member, "more.gcode")).status_code == 413
    # ...until the scheduled task deletes the old job's file.
    ran = await run_tick(sessionmaker=app.state.sessionmaker, settings=settings, holder="test")
    assert ran is not None
    assert "purge_job_files" in ran
    left = stored_files(settings)
    assert names["old"] not in left
    assert names["recent"] in left
    assert names["live"] in left
    async with app.state.sessionmaker() as session:
        purged = await session.get(Job, old["id"])
        assert purged is not None
        assert purged.flags.get("file_deleted_at")
    # The record stays, and the room is freed.
    assert (await client.get(f"/api/v1/jobs/{old['id']}", headers=member)).status_code == 200
    assert (await upload(client, member, "more.gcode")).status_code == 201


async def test_a_file_shared_with_a_live_requeued_job_is_kept(
    app: Any, client: httpx.AsyncClient, member: dict[str, str], settings: Settings
) -> None:
    old = (await upload(client, member, "old.gcode")).json()
    await client.post(f"/api/v1/jobs/{old['id']}/cancel", headers=member)
    async with app.state.sessionmaker() as session:
        job = await session.get(Job, old["id"])
        assert job is not None
        job.ended_at = utcnow() - dt.timedelta(days=31)
        again = Job(
            owner_id=job.owner_id,
            title="again",
            state=JobState.QUEUED,
            machine_kind=job.machine_kind,
            file_name=job.file_name,
            stored_name=job.stored_name,
            file_sha256=job.file_sha256,
            file_size=job.file_size,
            lines_total=job.lines_total,
        )
        session.add(again)
        name = job.stored_name
        await session.commit()
    async with app.state.sessionmaker() as session, session.begin():
        purged = await purge_job_files(session=session, settings=settings, now=utcnow())
    assert purged == []
    assert name in stored_files(settings)
