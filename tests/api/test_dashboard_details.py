"""Dashboard details: the right words per machine kind, no stale ETA, no dead links on idle
machines, and a favicon."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import update

from microfactory.jobs.models import Job, JobState
from tests.api.test_jobs import make_machine, upload
from tests.conftest import UserFactory
from tests.designs.test_design_pages import browser_login

CNC = b"G21\nG90\nG0 Z5\nM3 S10000\nG1 X10 Y10 F600\nG1 X20 Y0\nM5\n"


async def _end(app: Any, job_id: int, machine_id: int, state: JobState, **values: Any) -> None:
    async with app.state.sessionmaker() as session, session.begin():
        await session.execute(
            update(Job).where(Job.id == job_id).values(state=state, machine_id=machine_id, **values)
        )


async def test_a_mill_job_asks_for_the_work_area_a_printer_job_for_the_bed(
    app: Any, client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    _, staff = await make_user("operator", username="words-operator")
    await make_user("member", username="words-member")
    member = (await make_user("member"))[1]
    mill = await make_machine(
        client, staff, name="Mill", kind="cnc_mill", driver="manual", connection={}
    )
    printer = await make_machine(client, staff, name="Printer 2")
    cnc_job = (await upload(client, member, CNC, name="part.nc", machine_kind="cnc_mill")).json()
    fdm_job = (await upload(client, member)).json()
    await _end(app, cnc_job["id"], mill["id"], JobState.FINISHED)
    await _end(app, fdm_job["id"], printer["id"], JobState.FINISHED)
    await browser_login(client, "words-operator")

    mill_page = (await client.get(f"/jobs/{cnc_job['id']}")).text
    assert "Work area cleared: good" in mill_page
    assert "Bed cleared" not in mill_page
    printer_page = (await client.get(f"/jobs/{fdm_job['id']}")).text
    assert "Bed cleared: good" in printer_page


async def test_a_cancelled_job_shows_no_eta(
    app: Any, client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    _, staff = await make_user("operator", username="eta-operator")
    printer = await make_machine(client, staff, name="Printer 3")
    job = (await upload(client, staff)).json()
    progress = {"percent": 40.0, "lines_acked": 1, "eta_s": 600.0}
    await _end(app, job["id"], printer["id"], JobState.RUNNING, progress=progress)
    await browser_login(client, "eta-operator")
    assert "ETA 10.0 min" in (await client.get(f"/jobs/{job['id']}")).text
    await _end(app, job["id"], printer["id"], JobState.CANCELLED, progress=progress)
    assert "ETA" not in (await client.get(f"/jobs/{job['id']}")).text


async def test_idle_machine_cards_carry_no_job_link(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    _, staff = await make_user("operator", username="grid-operator")
    await make_machine(client, staff, name="Idle printer")
    await browser_login(client, "grid-operator")
    grid = (await client.get("/machines")).text
    assert "Idle printer" in grid
    assert "/jobs/None" not in grid
    assert "Job None" not in grid


async def test_every_page_has_a_favicon_that_is_served(client: httpx.AsyncClient) -> None:
    page = (await client.get("/login")).text
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page
    icon = await client.get("/static/favicon.svg")
    assert icon.status_code == 200
    assert icon.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in icon.content
