"""The job lifecycle: the only code that changes a job's state.

Every change of `Job.state` goes through `transition` here. It

1. checks the move against the transition table (`RULES`); a refused move is a 409 that
   names the rule;
2. reads the state in the database (`SELECT … FOR UPDATE` on PostgreSQL) and writes the new
   one with a conditional `UPDATE … WHERE id = ? AND state = ?`, so a stale copy of the job
   can never win: of two concurrent transitions from the same state exactly one updates a row,
   and the other is refused;
3. appends a `job_events` row (from, to, when, who, why, the last line where relevant);
4. publishes a `JobChanged` event after the transaction commits (see microfactory/events.py);
   usage, booking check-in, notifications and the live stream subscribe to it.

Callers own the transaction (they commit); the lifecycle only flushes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.accounts.models import User
from microfactory.db import utcnow
from microfactory.errors import ConflictError, NotFoundError
from microfactory.events import MACHINE, SYSTEM, Actor, JobChanged, publish_after_commit
from microfactory.jobs.models import ACTIVE_STATES, ENDED_STATES, Job, JobEvent, JobState
from microfactory.usage.models import UsageRecord

S = JobState
UNSTARTED = frozenset({S.SUBMITTED, S.APPROVED, S.QUEUED})


@dataclass(frozen=True, slots=True)
class Rule:
    """One kind of move: from which states, to which state, and the rule in words."""

    name: str
    sources: frozenset[JobState]
    target: JobState
    topic: str
    rule: str


def _rule(name: str, sources: Iterable[JobState], target: JobState, topic: str, rule: str) -> Rule:
    return Rule(name, frozenset(sources), target, topic, rule)


#: The transition table: every move a job can make. Anything else is refused.
RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        _rule("approve", [S.SUBMITTED], S.APPROVED, "job.approved",
              "only submitted jobs can be approved"),
        _rule("queue", [S.APPROVED], S.QUEUED, "job.queued",
              "a job joins the queue once it is approved and its G-code is ready"),
        _rule("assign", [S.QUEUED], S.ASSIGNED, "job.assigned",
              "only queued jobs (approved, with their G-code ready) can be assigned to a machine"),
        _rule("unassign", [S.ASSIGNED], S.QUEUED, "job.unassigned",
              "only an assigned job that has not started can go back to the queue"),
        _rule("start", [S.ASSIGNED], S.RUNNING, "job.started",
              "only a job assigned to a machine can start"),
        _rule("pause", [S.RUNNING], S.PAUSED, "job.paused",
              "only running jobs can be paused"),
        _rule("resume", [S.PAUSED], S.RUNNING, "job.resumed",
              "only paused jobs can be resumed"),
        _rule("finish", [S.RUNNING, S.PAUSED], S.FINISHED, "job.ended",
              "only a running or paused job can finish"),
        _rule("fail", [*UNSTARTED, *ACTIVE_STATES], S.FAILED, "job.ended",
              "a job can fail until it has ended"),
        _rule("cancel", [*UNSTARTED, *ACTIVE_STATES], S.CANCELLED, "job.ended",
              "a job can be cancelled until it has ended"),
        _rule("clear", ENDED_STATES, S.CLEARED, "job.cleared",
              "only finished, failed or cancelled jobs that ran on a machine can be cleared"),
    )
}  # fmt: skip

#: (from, to) pairs the table allows, for tests and documentation.
ALLOWED: frozenset[tuple[JobState, JobState]] = frozenset(
    (source, r.target) for r in RULES.values() for source in r.sources
)


class TransitionRefused(ConflictError):
    """The job is not in a state the move starts from (a 409 naming the rule)."""


def by_user(user: User) -> Actor:
    """Return the actor for a person."""
    return Actor.person(user.id, user.username)


def _refusal(job_id: int, current: JobState, rule: Rule) -> TransitionRefused:
    return TransitionRefused(
        f"job {job_id} is {current.value}; cannot {rule.name} it: {rule.rule}",
        rule=rule.name,
        state=current.value,
    )


async def _current_state(session: AsyncSession, job_id: int) -> JobState:
    stmt = select(Job.state).where(Job.id == job_id)
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        stmt = stmt.with_for_update()  # hold the row until our commit: the other writer waits
    state = (await session.execute(stmt)).scalar_one_or_none()
    if state is None:
        raise NotFoundError(f"job {job_id} not found")
    return state


async def transition(
    *,
    session: AsyncSession,
    job: Job | int,
    rule: str,
    actor: Actor,
    reason: str | None = None,
    values: Mapping[str, Any] | None = None,
    only_from: Iterable[JobState] | None = None,
    details: Mapping[str, Any] | None = None,
    at: dt.datetime | None = None,
) -> Job:
    """Move a job by one rule of the table, checked against the state in the database.

    `values` are other columns written in the same UPDATE (timestamps, machine, reason);
    `only_from` narrows the rule's sources for this caller (cancel before a machine has it).
    Returns the job, refreshed from the database. Raises TransitionRefused (409).
    """
    spec = RULES[rule]
    job_id = job if isinstance(job, int) else job.id
    sources = spec.sources if only_from is None else spec.sources & frozenset(only_from)
    current = await _current_state(session, job_id)
    if current not in sources:
        raise _refusal(job_id, current, spec)
    now = at or utcnow()
    changes = dict(values or {})
    changes["state"] = spec.target
    result = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == current)
        .values(**changes)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 1) != 1:
        # Another writer moved the job between our read and our write: it won.
        raise _refusal(job_id, await _current_state(session, job_id), spec)
    fresh = await session.get(Job, job_id, populate_existing=True)
    assert fresh is not None
    row = JobEvent(
        job_id=job_id,
        from_state=current,
        to_state=spec.target,
        at=now,
        actor=actor.kind,
        actor_id=actor.user_id,
        reason=reason,
        last_acked_line=fresh.last_acked_line if spec.topic == "job.ended" else None,
        last_line_text=fresh.last_line_text if spec.topic == "job.ended" else None,
    )
    session.add(row)
    await session.flush()
    publish_after_commit(
        session,
        _changed(fresh, spec.topic, current, row, actor, reason, details),
    )
    return fresh


def _changed(
    job: Job,
    topic: str,
    current: JobState | None,
    row: JobEvent,
    actor: Actor,
    reason: str | None,
    details: Mapping[str, Any] | None,
) -> JobChanged:
    filament = (job.analysis or {}).get("filament_g")
    return JobChanged(
        topic=topic,
        job_id=job.id,
        owner_id=job.owner_id,
        machine_id=job.machine_id,
        from_state=current.value if current is not None else None,
        to_state=row.to_state.value,
        at=row.at,
        actor=actor.kind,
        actor_id=actor.user_id,
        reason=reason,
        event_id=row.id,
        details=dict(details or {}),
        title=job.title,
        started_at=job.started_at,
        ended_at=job.ended_at,
        paused_s=job.paused_s or 0.0,
        lines_total=job.lines_total,
        last_acked_line=job.last_acked_line,
        filament_g=float(filament) if filament else None,
    )


async def create(*, session: AsyncSession, job: Job, actor: Actor) -> Job:
    """Store a new job in its first state, `submitted`, and record it as its first event."""
    job.state = S.SUBMITTED
    session.add(job)
    await session.flush()
    await _record_created(session=session, job=job, actor=actor)
    return job


async def _record_created(*, session: AsyncSession, job: Job, actor: Actor) -> None:
    now = job.created_at or utcnow()
    row = JobEvent(
        job_id=job.id, from_state=None, to_state=job.state, at=now, actor=actor.kind,
        actor_id=actor.user_id, reason=None,
    )  # fmt: skip
    session.add(row)
    await session.flush()
    publish_after_commit(session, _changed(job, "job.created", None, row, actor, None, None))


def announce_preparation(*, session: AsyncSession, job: Job) -> None:
    """Tell live pages, after the commit, that a job's G-code preparation moved on.

    Not a transition (the state stays) and not recorded as an event: a `job.prepared` on the
    live stream, so the job's page shows "Making the G-code", the result or the failure
    without polling.
    """
    publish_after_commit(
        session,
        JobChanged(
            topic="job.prepared",
            job_id=job.id,
            owner_id=job.owner_id,
            machine_id=job.machine_id,
            from_state=job.state.value,
            to_state=job.state.value,
            at=utcnow(),
            actor=SYSTEM.kind,
            details={"preparation": job.preparation},
            title=job.title,
            lines_total=job.lines_total,
        ),
    )


def announce_waiting(*, session: AsyncSession, job: Job) -> None:
    """Tell subscribers, after the commit, that a queued job waits for a new reason.

    Not a transition: a `job.waiting` with the reason, so the member can be told when their
    job waits for something beyond the ordinary queue (notifications) and live pages refresh.
    """
    publish_after_commit(
        session,
        JobChanged(
            topic="job.waiting",
            job_id=job.id,
            owner_id=job.owner_id,
            machine_id=job.machine_id,
            from_state=job.state.value,
            to_state=job.state.value,
            at=utcnow(),
            actor=SYSTEM.kind,
            reason=job.waiting_reason,
            title=job.title,
            lines_total=job.lines_total,
        ),
    )


async def events_of(*, session: AsyncSession, job_id: int) -> list[JobEvent]:
    """Return a job's transitions, oldest first."""
    result = await session.execute(
        select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
    )
    return list(result.scalars())


async def unrecorded_runs(*, session: AsyncSession) -> list[JobChanged]:
    """Return the end of every run that reached a machine but has no usage record yet.

    Reactions are delivered after the commit, in this process: a crash in between loses
    them. The usage log must not lose a run, so at startup these endings are handed to its
    (idempotent) subscriber again.
    """
    recorded = select(UsageRecord.id).where(
        UsageRecord.job_id == JobEvent.job_id, UsageRecord.source == "job"
    )
    rows = await session.execute(
        select(JobEvent, Job)
        .join(Job, Job.id == JobEvent.job_id)
        .where(
            JobEvent.to_state.in_(list(ENDED_STATES)),
            JobEvent.from_state.in_([S.RUNNING, S.PAUSED]),
            ~recorded.exists(),
        )
        .order_by(JobEvent.id)
    )
    return [
        _changed(
            job,
            "job.ended",
            event.from_state,
            event,
            Actor(event.actor, event.actor_id),
            event.reason,
            {"usage_note": "recorded at startup: the server stopped before it was logged"},
        )
        for event, job in rows.all()
    ]


async def actor_names(*, session: AsyncSession, events: Iterable[JobEvent]) -> dict[int, str]:
    """Return the usernames of the people in a job's history, by id."""
    ids = {e.actor_id for e in events if e.actor_id is not None}
    if not ids:
        return {}
    rows = await session.execute(select(User.id, User.username).where(User.id.in_(ids)))
    return {int(uid): str(name) for uid, name in rows.all()}


# -- the moves, with the columns each one sets ----------------------------------------------


async def approve(*, session: AsyncSession, job: Job | int, by: User) -> Job:
    """Approve a submitted job; it joins the queue at once when its G-code is ready."""
    done = await transition(
        session=session,
        job=job,
        rule="approve",
        actor=by_user(by),
        values={"approved_at": utcnow(), "approved_by_id": by.id},
    )
    if done.preparation == "ready":
        done = await queue(session=session, job=done, actor=by_user(by))
    return done


async def queue(
    *, session: AsyncSession, job: Job | int, actor: Actor, reason: str | None = None
) -> Job:
    """Put an approved job with ready G-code in the queue."""
    return await transition(
        session=session, job=job, rule="queue", actor=actor, reason=reason,
        values={"queued_at": utcnow(), "waiting_reason": None},
    )  # fmt: skip


async def assign(*, session: AsyncSession, job: Job | int, machine_id: int, actor: Actor) -> Job:
    """Give a queued job to a machine; its supervisor starts it after the commit."""
    return await transition(
        session=session, job=job, rule="assign", actor=actor,
        values={"machine_id": machine_id, "waiting_reason": None},
    )  # fmt: skip


async def unassign(
    *, session: AsyncSession, job: Job | int, reason: str, actor: Actor = MACHINE
) -> Job:
    """Put an assigned job back in the queue, as it was, when its machine did not start it."""
    return await transition(
        session=session, job=job, rule="unassign", actor=actor, reason=reason,
        values={"machine_id": None, "waiting_reason": reason[:300]},
    )  # fmt: skip


async def start(
    *, session: AsyncSession, job: Job | int, at: dt.datetime, actor: Actor = MACHINE
) -> Job:
    """Record that the machine started the job."""
    return await transition(
        session=session, job=job, rule="start", actor=actor, at=at,
        values={"started_at": at, "failure_reason": None, "paused_at": None, "paused_s": 0.0},
    )  # fmt: skip


async def pause(*, session: AsyncSession, job: Job | int, actor: Actor = MACHINE) -> Job:
    """Record that the job paused."""
    now = utcnow()
    return await transition(
        session=session, job=job, rule="pause", actor=actor, at=now, values={"paused_at": now}
    )


async def resume(*, session: AsyncSession, job: Job | int, actor: Actor = MACHINE) -> Job:
    """Record that the job resumed; the pause counts out of its active time."""
    job_id = job if isinstance(job, int) else job.id
    row = await session.get(Job, job_id, populate_existing=True)
    now = utcnow()
    paused_s = (row.paused_s or 0.0) if row else 0.0
    if row is not None and row.paused_at is not None:
        paused_s += max(0.0, (now - row.paused_at).total_seconds())
    return await transition(
        session=session, job=job, rule="resume", actor=actor, at=now,
        values={"paused_at": None, "paused_s": paused_s},
    )  # fmt: skip


async def end(
    *,
    session: AsyncSession,
    job: Job | int,
    state: JobState,
    actor: Actor = MACHINE,
    reason: str | None = None,
    progress: Mapping[str, Any] | None = None,
    details: Mapping[str, Any] | None = None,
    only_from: Iterable[JobState] | None = None,
) -> Job:
    """End a job: finished, failed or cancelled, with why and how far it got."""
    rule = {S.FINISHED: "finish", S.FAILED: "fail", S.CANCELLED: "cancel"}[state]
    job_id = job if isinstance(job, int) else job.id
    row = await session.get(Job, job_id, populate_existing=True)
    if row is None:
        raise NotFoundError(f"job {job_id} not found")
    now = utcnow()
    values: dict[str, Any] = {"ended_at": now}
    if progress is not None:
        merged = dict(progress)
        if state is S.FINISHED:
            merged = {**merged, "percent": 100.0, "eta_s": 0}
        values["progress"] = merged
        if merged.get("lines_acked") is not None:
            values["last_acked_line"] = merged.get("lines_acked")
            values["last_line_text"] = (merged.get("last_line") or "")[:500] or None
    last = values.get("last_acked_line", row.last_acked_line)
    text = values.get("last_line_text", row.last_line_text)
    full_reason = reason
    if state is S.FAILED and reason and last and row.state in ACTIVE_STATES:
        full_reason = f"{reason} (last acknowledged line {last}" + (f": {text}" if text else "")
        full_reason += ")"
    if state is not S.FINISHED:
        values["failure_reason"] = full_reason if state is S.FAILED else None
    if row.state in ACTIVE_STATES:
        if row.started_at is None and row.state is not S.ASSIGNED:
            values["started_at"] = now
        if row.paused_at is not None:
            values["paused_s"] = (row.paused_s or 0.0) + max(
                0.0, (now - row.paused_at).total_seconds()
            )
            values["paused_at"] = None
    return await transition(
        session=session,
        job=job_id,
        rule=rule,
        actor=actor,
        reason=full_reason,
        values=values,
        only_from=only_from,
        details=details,
        at=now,
    )


async def clear(
    *, session: AsyncSession, job: Job | int, by: User, outcome: str, notes: str = ""
) -> Job:
    """Confirm the bed is clear after a job ended on a machine, with its outcome."""
    job_id = job if isinstance(job, int) else job.id
    row = await session.get(Job, job_id, populate_existing=True)
    if row is None:
        raise NotFoundError(f"job {job_id} not found")
    if row.machine_id is None:
        raise _refusal(job_id, row.state, RULES["clear"])
    values: dict[str, Any] = {
        "outcome": outcome,
        "cleared_at": utcnow(),
        "cleared_by_id": by.id,
    }
    if notes:
        values["notes"] = (row.notes + "\n" + notes).strip()
    return await transition(
        session=session, job=job_id, rule="clear", actor=by_user(by), reason=outcome,
        values=values,
    )  # fmt: skip


__all__ = ["MACHINE", "RULES", "SYSTEM", "Actor", "TransitionRefused", "by_user", "transition"]
