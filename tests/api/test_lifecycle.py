"""The job lifecycle: every move in the table, refusals, stale copies and races, the history."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from microfactory.errors import ConflictError
from microfactory.jobs import lifecycle
from microfactory.jobs.models import Job, JobEvent, JobState
from tests.api.test_jobs import make_machine, upload
from tests.conftest import UserFactory
from tests.designs.test_design_pages import browser_login

S = JobState


@pytest.fixture
async def shop(client: httpx.AsyncClient, make_user: UserFactory) -> dict[str, Any]:
    """An operator, a member, and a printer (offline: no supervisors run here)."""
    staff_user, staff = await make_user("operator", username="lifecycle-operator")
    member_user, member = await make_user("member", username="lifecycle-member")
    machine = await make_machine(client, staff, name="Lifecycle printer")
    return {
        "staff_user": staff_user,
        "staff": staff,
        "member_user": member_user,
        "member": member,
        "machine": machine,
    }


async def _new_job(client: httpx.AsyncClient, shop: dict[str, Any]) -> int:
    resp = await upload(client, shop["member"])
    assert resp.status_code == 201, resp.text
    return int(resp.json()["id"])


async def _force_state(app: Any, job_id: int, state: JobState, machine_id: int | None) -> None:
    """Put a job in a state directly, as a test fixture (bypassing the lifecycle)."""
    async with app.state.sessionmaker() as session, session.begin():
        await session.execute(
            update(Job).where(Job.id == job_id).values(state=state, machine_id=machine_id)
        )


async def _events(app: Any, job_id: int) -> list[tuple[str | None, str]]:
    async with app.state.sessionmaker() as session:
        rows = await lifecycle.events_of(session=session, job_id=job_id)
    return [(e.from_state.value if e.from_state else None, e.to_state.value) for e in rows]


def test_the_table_is_the_documented_life_of_a_job() -> None:
    # submitted → approved → queued → assigned → running ⇄ paused → finished|failed|cancelled
    # → cleared; a job can fail or be cancelled until it ends; a refused start re-queues it.
    moves = {(a.value, b.value) for a, b in lifecycle.ALLOWED}
    assert {
        ("submitted", "approved"),
        ("approved", "queued"),
        ("queued", "assigned"),
        ("assigned", "running"),
        ("running", "paused"),
        ("paused", "running"),
        ("running", "finished"),
        ("assigned", "queued"),
        ("finished", "cleared"),
        ("failed", "cleared"),
        ("cancelled", "cleared"),
    } <= moves
    assert not any(a == "cleared" for a, _ in moves)  # cleared is the end
    assert ("submitted", "queued") not in moves  # approval comes first
    assert ("queued", "running") not in moves  # a machine is assigned first
    assert ("finished", "failed") not in moves  # an ended job stays ended


@pytest.mark.parametrize("rule", sorted(lifecycle.RULES))
async def test_every_move_from_every_state(
    app: Any, client: httpx.AsyncClient, shop: dict[str, Any], rule: str
) -> None:
    spec = lifecycle.RULES[rule]
    for state in JobState:
        job_id = await _new_job(client, shop)
        await _force_state(app, job_id, state, shop["machine"]["id"])
        async with app.state.sessionmaker() as session:
            if state in spec.sources:
                moved = await lifecycle.transition(
                    session=session, job=job_id, rule=rule, actor=lifecycle.SYSTEM
                )
                assert moved.state is spec.target
                await session.commit()
            else:
                with pytest.raises(lifecycle.TransitionRefused) as refused:
                    await lifecycle.transition(
                        session=session, job=job_id, rule=rule, actor=lifecycle.SYSTEM
                    )
                assert refused.value.status_code == 409
                assert refused.value.detail == (
                    f"job {job_id} is {state.value}; cannot {rule} it: {spec.rule}"
                )
                await session.rollback()
        async with app.state.sessionmaker() as session:
            stored = await session.get(Job, job_id)
            assert stored is not None
            history = await lifecycle.events_of(session=session, job_id=job_id)
        if state in spec.sources:
            assert stored.state is spec.target
            assert (history[-1].from_state, history[-1].to_state) == (state, spec.target)
        else:
            assert stored.state is state  # a refused move changes nothing
            assert history[-1].from_state is None  # only the creation is recorded


async def test_refused_actions_over_http_are_409_with_the_rule(
    app: Any, client: httpx.AsyncClient, shop: dict[str, Any]
) -> None:
    job_id = await _new_job(client, shop)
    staff = shop["staff"]
    approved = await client.post(f"/api/v1/jobs/{job_id}/approve", headers=staff)
    assert approved.json()["state"] == "queued"
    again = await client.post(f"/api/v1/jobs/{job_id}/approve", headers=staff)
    assert again.status_code == 409
    assert again.json()["detail"] == (
        f"job {job_id} is queued; cannot approve it: only submitted jobs can be approved"
    )
    assert again.json()["rule"] == "approve"
    clear = await client.post(
        f"/api/v1/jobs/{job_id}/clear", json={"outcome": "good"}, headers=staff
    )
    assert clear.status_code == 409
    assert "only finished, failed or cancelled jobs that ran on a machine" in clear.json()["detail"]
    assert (await client.post(f"/api/v1/jobs/{job_id}/cancel", headers=staff)).status_code == 200
    twice = await client.post(f"/api/v1/jobs/{job_id}/cancel", headers=staff)
    assert twice.status_code == 409
    assert "a job can be cancelled until it has ended" in twice.json()["detail"]
    assert await _events(app, job_id) == [
        (None, "submitted"),
        ("submitted", "approved"),
        ("approved", "queued"),
        ("queued", "cancelled"),
    ]


async def test_a_stale_copy_never_wins(
    app: Any, client: httpx.AsyncClient, shop: dict[str, Any]
) -> None:
    job_id = await _new_job(client, shop)
    await _force_state(app, job_id, S.QUEUED, None)
    async with app.state.sessionmaker() as stale_session:
        stale = await stale_session.get(Job, job_id)
        assert stale is not None
        assert stale.state is S.QUEUED
        # Someone else cancels the job meanwhile and commits.
        async with app.state.sessionmaker() as other:
            await lifecycle.end(
                session=other, job=job_id, state=S.CANCELLED, actor=lifecycle.SYSTEM
            )
            await other.commit()
        assert stale.state is S.QUEUED  # our copy still says queued
        with pytest.raises(lifecycle.TransitionRefused, match="is cancelled"):
            await lifecycle.assign(
                session=stale_session,
                job=stale,
                machine_id=shop["machine"]["id"],
                actor=lifecycle.SYSTEM,
            )
        await stale_session.commit()
    async with app.state.sessionmaker() as session:
        stored = await session.get(Job, job_id)
        assert stored is not None
        assert stored.state is S.CANCELLED
        assert stored.machine_id is None


RACES = {
    # two operators dispatch the same queued job to two machines at once
    "assign-vs-assign": (S.QUEUED, ("assign", "assign")),
    # the machine reports the end while an operator cancels
    "finish-vs-cancel": (S.RUNNING, ("finish", "cancel")),
}


async def _race(
    app: Any, job_id: int, machine_id: int, rules: tuple[str, str], *, interleave: bool
) -> list[str]:
    """Run two transitions of one job at once, in two sessions; return the winners' rules."""
    read_both = asyncio.Event()
    reads = 0
    original = lifecycle._current_state

    async def read_then_wait(session: Any, jid: int) -> JobState:
        nonlocal reads
        state = await original(session, jid)
        reads += 1
        if reads >= 2:
            read_both.set()
        if interleave and reads <= 2:
            # Both read the same state before either writes. On PostgreSQL the second read
            # waits for the first writer's row lock instead, so do not wait for it forever.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(read_both.wait(), 1.0)
        return state

    async def move(rule: str) -> str:
        async with app.state.sessionmaker() as session:
            values = {"machine_id": machine_id} if rule == "assign" else None
            await lifecycle.transition(
                session=session, job=job_id, rule=rule, actor=lifecycle.SYSTEM, values=values
            )
            await session.commit()
        return rule

    lifecycle._current_state = read_then_wait  # type: ignore[assignment]
    try:
        results = await asyncio.gather(*(move(r) for r in rules), return_exceptions=True)
    finally:
        lifecycle._current_state = original  # type: ignore[assignment]
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, ConflictError):
            raise r
    return [r for r in results if isinstance(r, str)]


@pytest.mark.parametrize("interleave", [True, False], ids=["read-read-write", "free"])
@pytest.mark.parametrize("race", sorted(RACES))
async def test_two_concurrent_transitions_exactly_one_wins(
    app: Any, client: httpx.AsyncClient, shop: dict[str, Any], interleave: bool, race: str
) -> None:
    start, rules = RACES[race]
    for _ in range(3):
        job_id = await _new_job(client, shop)
        await _force_state(app, job_id, start, shop["machine"]["id"])
        winners = await _race(app, job_id, shop["machine"]["id"], rules, interleave=interleave)
        assert len(winners) == 1, winners
        async with app.state.sessionmaker() as session:
            stored = await session.get(Job, job_id)
            assert stored is not None
            assert stored.state is lifecycle.RULES[winners[0]].target
            moves = await session.scalar(
                select(func.count())
                .select_from(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.from_state.is_not(None))
            )
        assert moves == 1  # the loser left no trace in the history


async def test_events_endpoint_shows_the_history_to_its_owner_and_staff(
    client: httpx.AsyncClient, shop: dict[str, Any], make_user: UserFactory
) -> None:
    job_id = await _new_job(client, shop)
    await client.post(f"/api/v1/jobs/{job_id}/approve", headers=shop["staff"])
    await client.post(f"/api/v1/jobs/{job_id}/cancel", headers=shop["member"])

    mine = await client.get(f"/api/v1/jobs/{job_id}/events", headers=shop["member"])
    assert mine.status_code == 200
    events = mine.json()
    assert [(e["from_state"], e["to_state"]) for e in events] == [
        (None, "submitted"),
        ("submitted", "approved"),
        ("approved", "queued"),
        ("queued", "cancelled"),
    ]
    assert [e["actor"] for e in events] == ["user"] * 4
    assert [e["actor_id"] for e in events] == [
        shop["member_user"].id,
        shop["staff_user"].id,
        shop["staff_user"].id,
        shop["member_user"].id,
    ]
    assert events[-1]["reason"] == "cancelled"
    assert all(e["at"] for e in events)

    staff = await client.get(f"/api/v1/jobs/{job_id}/events", headers=shop["staff"])
    assert staff.json() == events
    _, stranger = await make_user("member", username="someone-else")
    hidden = await client.get(f"/api/v1/jobs/{job_id}/events", headers=stranger)
    assert hidden.status_code == 404
    assert (await client.get("/api/v1/jobs/9999/events", headers=shop["staff"])).status_code == 404


async def test_the_job_page_shows_the_timeline(
    client: httpx.AsyncClient, shop: dict[str, Any]
) -> None:
    job_id = await _new_job(client, shop)
    await client.post(f"/api/v1/jobs/{job_id}/approve", headers=shop["staff"])
    await browser_login(client, "lifecycle-member")
    page = await client.get(f"/jobs/{job_id}")
    assert page.status_code == 200
    html = page.text
    assert "data-job-timeline" in html
    assert "by lifecycle-operator" in html
    assert html.index(">submitted<") < html.index(">approved<") < html.rindex(">queued<")


async def test_cancel_always_works_for_an_assigned_job_no_machine_started(
    app: Any, client: httpx.AsyncClient, shop: dict[str, Any]
) -> None:
    job_id = await _new_job(client, shop)
    await _force_state(app, job_id, S.ASSIGNED, shop["machine"]["id"])  # its machine is offline
    resp = await client.post(f"/api/v1/jobs/{job_id}/cancel", headers=shop["member"])
    assert resp.status_code == 200, resp.text
    assert resp.json()["state"] == "cancelled"


async def test_cancel_of_a_running_job_whose_machine_is_unreachable_works(
    app: Any, client: httpx.AsyncClient, shop: dict[str, Any]
) -> None:
    job_id = await _new_job(client, shop)
    await _force_state(app, job_id, S.RUNNING, shop["machine"]["id"])
    resp = await client.post(f"/api/v1/jobs/{job_id}/cancel", headers=shop["staff"])
    assert resp.status_code == 200, resp.text
    assert resp.json()["state"] == "cancelled"
    async with app.state.sessionmaker() as session:
        last = (await lifecycle.events_of(session=session, job_id=job_id))[-1]
    assert last.from_state is S.RUNNING
    assert last.reason is not None
    assert "could not be reached" in last.reason


async def test_a_run_whose_usage_a_crash_lost_is_logged_at_startup(
    app: Any, client: httpx.AsyncClient, shop: dict[str, Any]
) -> None:
    from microfactory.app import catch_up_usage
    from microfactory.db import make_sessionmaker
    from microfactory.usage.models import UsageRecord

    job_id = await _new_job(client, shop)
    await _force_state(app, job_id, S.RUNNING, shop["machine"]["id"])
    # A session without the app's event bus: the commit happens, the reactions never run,
    # as when the server stops between the two.
    crashing = make_sessionmaker(app.state.engine)
    async with crashing() as session:
        await lifecycle.end(session=session, job=job_id, state=S.FINISHED)
        await session.commit()
    await app.state.events.drain()

    async def usage() -> list[UsageRecord]:
        async with app.state.sessionmaker() as session:
            return list((await session.execute(select(UsageRecord))).scalars())

    assert await usage() == []
    await catch_up_usage(app.state.sessionmaker)
    records = await usage()
    assert [(r.job_id, r.outcome, r.source) for r in records] == [(job_id, "finished", "job")]
    assert "recorded at startup" in records[0].note
    await catch_up_usage(app.state.sessionmaker)  # a second start changes nothing
    assert len(await usage()) == 1


async def test_reactions_run_after_commit_and_not_after_rollback(
    app: Any, client: httpx.AsyncClient, shop: dict[str, Any]
) -> None:
    from microfactory.notifications.models import Notification

    updates = app.state.fleet.subscribe()
    next_update = asyncio.ensure_future(anext(updates))
    job_id = await _new_job(client, shop)
    await _force_state(app, job_id, S.RUNNING, shop["machine"]["id"])

    # A transition that is rolled back publishes nothing.
    async with app.state.sessionmaker() as session:
        await lifecycle.end(session=session, job=job_id, state=S.FAILED, reason="boom")
        await session.rollback()
    await app.state.events.drain()
    kind, item_id, first = await asyncio.wait_for(next_update, 5)
    assert (kind, item_id, first["to"]) == ("job", job_id, "submitted")  # the creation only

    # A committed one reaches the live stream and the owner's outbox.
    async with app.state.sessionmaker() as session:
        await lifecycle.end(session=session, job=job_id, state=S.FAILED, reason="nozzle clog")
        await session.commit()
    await app.state.events.drain()
    # In any order: the job's end, and each new message's recipient (their badge): the
    # owner's "failed", the staff's "bed needs clearing".
    jobs, messages = [], set()
    while not jobs or (shop["member_user"].id, "job_failed") not in messages:
        kind, item_id, data = await asyncio.wait_for(anext(updates), 5)
        if kind == "job":
            jobs.append((item_id, data))
        else:
            assert kind == "notification"
            messages.add((item_id, data["kind"]))
    assert len(jobs) == 1
    assert jobs[0][0] == job_id
    ended = jobs[0][1]
    assert ended["topic"] == "job.ended"
    assert (ended["from"], ended["to"]) == ("running", "failed")
    assert "reason" not in ended  # the shared stream carries no member's details
    await updates.aclose()
    async with app.state.sessionmaker() as session:
        notes = list(
            (
                await session.execute(
                    select(Notification).where(Notification.user_id == shop["member_user"].id)
                )
            ).scalars()
        )
    assert [(n.kind, n.body) for n in notes] == [("job_failed", "Why: nozzle clog")]
    assert "failed" in notes[0].subject
