"""Tell the live stream when a person has a new message, whatever made it.

Job messages are recorded by this package's subscribers; booking messages (confirmations,
cancellations by an operator, releases, reminders) inside the bookings' own transactions.
`service.enqueue` notes each recorded message in its session; once that transaction commits,
the recipient is published (`PUBLISHER_KEY` in the session's info, put there by
`subscribers.subscribe`), so an open page's unread badge and Messages page read them then,
never before the commit and never for a rolled-back message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

#: key in a session's `info` of the callable that puts (user id, kind) on the live stream
PUBLISHER_KEY = "message_publisher"
_RECORDED_KEY = "messages_recorded"

Publisher = Callable[[int, str], None]


def recorded(session: Any, user_id: int, kind: str) -> None:
    """Note a message recorded in this session's transaction (published after its commit)."""
    info = session.info
    if PUBLISHER_KEY not in info:
        return  # a session outside the app (CLI, migrations): nobody listens
    pending: list[tuple[int, str]] = info.setdefault(_RECORDED_KEY, [])
    if (user_id, kind) not in pending:
        pending.append((user_id, kind))


@event.listens_for(Session, "after_commit")
def _publish(session: Session) -> None:
    pending: list[tuple[int, str]] | None = session.info.pop(_RECORDED_KEY, None)
    publish: Publisher | None = session.info.get(PUBLISHER_KEY)
    if not pending or publish is None:
        return
    for user_id, kind in pending:
        publish(user_id, kind)


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    session.info.pop(_RECORDED_KEY, None)
