"""Re-print: a new job from an ended job's file, through approval and the queue's checks."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import update

from microfactory.jobs.models import Job, JobState
from tests.api.test_jobs import GCODE, make_machine, upload
from tests.conftest import UserFactory
from tests.designs.test_design_pages import browser_login


@pytest.fixture(autouse=True)
async def shop_printer(client: httpx.AsyncClient, make_user: UserFactory) -> dict[str, Any]:
    """The shop's printer (offline: no supervisors run here)."""
    _, staff = await make_user("operator", username="reprint-setup")
    return await make_machine(client, staff, name="Reprint printer")


async def _set(app: Any, job_id: int, **values: Any) -> None:
    async with app.state.sessionmaker() as session, session.begin():
        await session.execute(update(Job).where(Job.id == job_id).values(**values))


async def test_a_member_prints_an_ended_job_again(
    app: Any, client: httpx.AsyncClient, make_user: UserFactory, shop_printer: dict[str, Any]
) -> None:
    member_user, member = await make_user("member", username="again-member")
    original = (await upload(client, member, title="Hook")).json()
    await _set(app, original["id"], state=JobState.FINISHED, machine_id=shop_printer["id"])

    resp = await client.post(f"/api/v1/jobs/{original['id']}/reprint", headers=member)
    assert resp.status_code == 201, resp.text
    again = resp.json()
    assert again["id"] != original["id"]
    assert again["state"] == "submitted"  # an untrusted member's job waits for approval
    assert again["title"] == "Hook"
    assert again["owner_id"] == member_user.id
    assert again["file_sha256"] == original["file_sha256"]
    assert again["lines_total"] == original["lines_total"]
    assert again["progress"]["lines_acked"] == 0
    # The original is untouched.
    kept = (await client.get(f"/api/v1/jobs/{original['id']}", headers=member)).json()
    assert kept["state"] == "finished"


async def test_an_operator_reprints_a_members_job_for_them_approved(
    app: Any,
    client: httpx.AsyncClient,
    make_user: UserFactory,
    operator: dict[str, str],
    shop_printer: dict[str, Any],
) -> None:
    member_user, member = await make_user("member", username="for-member")
    original = (await upload(client, member)).json()
    await _set(app, original["id"], state=JobState.CLEARED, machine_id=shop_printer["id"])
    resp = await client.post(f"/api/v1/jobs/{original['id']}/reprint", headers=operator)
    assert resp.status_code == 201, resp.text
    assert resp.json()["owner_id"] == member_user.id  # still the member's part
    assert resp.json()["state"] in ("approved", "queued")


async def test_only_ended_jobs_with_their_file_can_be_printed_again(
    app: Any, client: httpx.AsyncClient, make_user: UserFactory, settings: Any
) -> None:
    _, member = await make_user("member", username="owner-m")
    _, stranger = await make_user("member", username="stranger-m")
    job = (await upload(client, member)).json()
    running = await client.post(f"/api/v1/jobs/{job['id']}/reprint", headers=member)
    assert running.status_code == 409
    assert "once it has ended" in running.json()["detail"]
    await _set(app, job["id"], state=JobState.FAILED)
    hidden = await client.post(f"/api/v1/jobs/{job['id']}/reprint", headers=stranger)
    assert hidden.status_code == 404
    # Retention removed the file: say so, and what to do.
    async with app.state.sessionmaker() as session:
        stored = (await session.get(Job, job["id"])).stored_name
    (settings.upload_dir / stored).unlink()
    gone = await client.post(f"/api/v1/jobs/{job['id']}/reprint", headers=member)
    assert gone.status_code == 409
    assert "upload it again" in gone.json()["detail"]
    assert stored not in gone.text


async def test_the_job_page_offers_print_again_once_ended(
    app: Any, client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    _, member = await make_user("member", username="page-member")
    job = (await upload(client, member, content=GCODE)).json()
    await browser_login(client, "page-member")
    assert "Print again" not in (await client.get(f"/jobs/{job['id']}")).text
    await _set(app, job["id"], state=JobState.CANCELLED)
    page = (await client.get(f"/jobs/{job['id']}")).text
    assert f'data-api="/api/v1/jobs/{job["id"]}/reprint"' in page
