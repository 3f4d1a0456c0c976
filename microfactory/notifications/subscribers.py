"""The outbox listens to the job lifecycle: a member hears when their job is approved,
starts, finishes, fails (with the reason), is cancelled by someone else, or waits for
something beyond the ordinary queue; operators (and the member whose part is done) hear
when a bed or work area needs clearing.

These run after the commit that made the change true (the event bus delivers only committed
events, one at a time, in order), each in its own short transaction. A message is recorded
once per event and person: its dedupe key names the job event (or, for waiting, the job and
the reason), so an event delivered twice (a retry here, another process) adds nothing.

The live stream subscribes after this module (microfactory/app.py), and the bus runs
subscribers in order: when a member's page hears of their job's change, the message is
already committed. Each committed message is also announced to its recipient's stream as a
`notification` event (notifications/live.py), whatever recorded it: the page's unread badge
and Messages page read it then (web/static/js/notifications.js, app.js).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory.events import EventBus, JobChanged
from microfactory.machines.models import Machine, MachineKind
from microfactory.notifications import live, service

log = logging.getLogger(__name__)

#: waits worth a message, by words of the matcher's reasons (jobs/matcher.py): the member
#: must act (no machine can run it), an operator must load a material, or a member's booking
#: holds the free machine. Every other wait is the ordinary queue (a free machine that does
#: not fit while the one that does is busy, the staggered start): no message for those.
NOTABLE_WAITS = ("no machine in the shop can run", "loaded", "booked")
RETRY_DELAYS_S = (0.2, 1.0)  # a busy database (SQLite locked, a PostgreSQL failover)


@dataclass(frozen=True, slots=True)
class Message:
    """A message to record for one person."""

    user_id: int
    kind: str
    subject: str
    body: str
    dedupe_key: str


def subscribe(
    bus: EventBus,
    sessionmaker: async_sessionmaker[AsyncSession],
    outbox: service.Outbox | None = None,
    explain: Callable[[str | None], str | None] | None = None,
    publish: live.Publisher | None = None,
) -> None:
    """Record the job lifecycle's messages; wake the outbox to send them.

    `explain` turns a failure reason into advice for the member (the jobs package's
    `explain_failure`, passed in by the app so that notifications never import jobs).
    With `publish`, every message committed through the app's sessions (job messages here,
    booking messages in the bookings' transactions) goes to it, (user id, kind): the live
    stream, so the recipient's unread badge moves.
    """
    if publish is not None:
        info = dict(sessionmaker.kw.get("info") or {})
        info[live.PUBLISHER_KEY] = publish
        sessionmaker.configure(info=info)

    async def record(event: JobChanged, messages: Sequence[Message]) -> None:
        if not messages:
            return
        for delay in (*RETRY_DELAYS_S, None):
            try:
                async with sessionmaker() as session, session.begin():
                    for m in messages:
                        await service.enqueue(
                            session=session, user_id=m.user_id, kind=m.kind, subject=m.subject,
                            body=m.body, job_id=event.job_id, dedupe_key=m.dedupe_key,
                        )  # fmt: skip
                break
            except DBAPIError:
                if delay is None:
                    raise
                log.warning("recording messages of job %s failed; retrying", event.job_id)
                await asyncio.sleep(delay)
        if outbox is not None:
            outbox.wake()

    def key(event: JobChanged, kind: str) -> str:
        return f"job-event:{event.event_id}:{kind}"

    async def on_approved(event: JobChanged) -> None:
        if event.actor_id == event.owner_id:
            return  # trusted members and operators approve their own jobs on submission
        await record(
            event,
            [
                Message(
                    event.owner_id, "job_approved", f"Your job {event.title!r} was approved",
                    "It waits in the queue for a free machine.", key(event, "job_approved"),
                )
            ],
        )  # fmt: skip

    async def on_started(event: JobChanged) -> None:
        await record(
            event,
            [
                Message(
                    event.owner_id, "job_started", f"Your job {event.title!r} started",
                    "Follow it live on its job page.", key(event, "job_started"),
                )
            ],
        )  # fmt: skip

    async def on_ended(event: JobChanged) -> None:
        messages = []
        kind = f"job_{event.to_state}"
        if event.to_state == "finished":
            messages.append(
                Message(
                    event.owner_id, kind, f"Your job {event.title!r} finished",
                    "It is done; collect it from the machine.", key(event, kind),
                )
            )  # fmt: skip
        elif event.to_state == "failed":
            reason = event.reason or "no reason was recorded"
            advice = explain(event.reason) if explain is not None else None
            messages.append(
                Message(
                    event.owner_id, kind, f"Your job {event.title!r} failed",
                    f"Why: {reason}" + (f"\n{advice}" if advice else ""), key(event, kind),
                )
            )  # fmt: skip
        elif event.actor_id != event.owner_id:  # cancelled, by someone else
            messages.append(
                Message(
                    event.owner_id, kind, f"Your job {event.title!r} was cancelled",
                    event.reason or "An operator cancelled it.", key(event, kind),
                )
            )  # fmt: skip
        if event.machine_id is not None:
            messages.extend(await bed_clear_messages(event))
        await record(event, messages)

    async def bed_clear_messages(event: JobChanged) -> list[Message]:
        async with sessionmaker() as session:
            machine = await session.get(Machine, event.machine_id or 0)
            staff = await service.staff_ids(session=session)
        name = machine.name if machine is not None else f"machine {event.machine_id}"
        cutting = machine is not None and machine.kind in (
            MachineKind.CNC_MILL,
            MachineKind.LASER_CUTTER,
        )
        area = "work area" if cutting else "bed"
        subject = f"The {area} of {name} needs clearing"
        body = (
            f"Job {event.title!r} {event.to_state} on it. Confirm the {area} is clear on the "
            "job's page; the machine takes no other job until then."
        )
        dedupe = key(event, "bed_clear")
        messages = [Message(uid, "bed_clear", subject, body, dedupe) for uid in staff]
        if event.to_state == "finished" and event.owner_id not in staff:
            messages.append(
                Message(
                    event.owner_id, "bed_clear", f"Your part {event.title!r} is ready on {name}",
                    f"Collect it: the {area} must be cleared before the machine's next job.",
                    key(event, "bed_clear"),
                )
            )  # fmt: skip
        return messages

    async def on_waiting(event: JobChanged) -> None:
        reason = event.reason or ""
        if event.topic == "job.waiting" and not any(w in reason for w in NOTABLE_WAITS):
            return
        if event.topic == "job.unassigned":
            subject = f"Your job {event.title!r} went back to the queue"
            dedupe = key(event, "job_waiting")
        else:
            subject = f"Your job {event.title!r} is waiting"
            digest = hashlib.sha256(reason.encode()).hexdigest()[:16]
            dedupe = f"job:{event.job_id}:waiting:{digest}"  # once per job and reason
        await record(event, [Message(event.owner_id, "job_waiting", subject, reason, dedupe)])

    bus.subscribe("job.approved", on_approved)
    bus.subscribe("job.started", on_started)
    bus.subscribe("job.ended", on_ended)
    bus.subscribe("job.waiting", on_waiting)
    bus.subscribe("job.unassigned", on_waiting)
