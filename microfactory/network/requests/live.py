"""Tell the live stream when a fabrication request changes: its state, its log, its delivery.

Any committed change to a request, one of its messages or its outbox items (an answer
signed here, an update received from the other shop, a delivery attempt noted), whichever
flow made it, is published as a `request` event after the commit, so an open request page
refetches. The event carries the request's id, and for the stream's filter the member it
was sent for (never shown): no requester, contact or design.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from microfactory.network.requests.models import FabricationRequest, OutboxItem, RequestMessage

#: key in a session's `info` of the callable that puts a request id on the live stream
PUBLISHER_KEY = "request_publisher"
_CHANGED_KEY = "requests_changed"

#: publish(request id, member id at A or None)
Publisher = Callable[[str, int | None], None]


def _member_of(session: Session, request_id: str) -> int | None:
    """Return the member a request was sent for (None at the making shop)."""
    req = session.identity_map.get(session.identity_key(FabricationRequest, request_id))
    if isinstance(req, FabricationRequest):
        return req.member_id
    # Not loaded by the flow (an outbox attempt): one small read, in the flushed transaction.
    return session.execute(
        select(FabricationRequest.member_id).where(FabricationRequest.id == request_id)
    ).scalar_one_or_none()


@event.listens_for(Session, "after_flush")
def _track(session: Session, _context: Any) -> None:
    if PUBLISHER_KEY not in session.info:
        return  # a session outside the app (CLI, migrations): nobody listens
    changed: dict[str, int | None] | None = None
    for obj in itertools.chain(session.new, session.dirty, session.deleted):
        if isinstance(obj, FabricationRequest):
            request_id = obj.id
        elif isinstance(obj, RequestMessage | OutboxItem):
            request_id = obj.request_id
        else:
            continue
        if request_id is None:
            continue
        if changed is None:
            changed = session.info.setdefault(_CHANGED_KEY, {})
        request_id = str(request_id)
        if isinstance(obj, FabricationRequest):
            changed[request_id] = obj.member_id
        elif request_id not in changed:
            changed[request_id] = _member_of(session, request_id)


@event.listens_for(Session, "after_commit")
def _publish(session: Session) -> None:
    changed: dict[str, int | None] | None = session.info.pop(_CHANGED_KEY, None)
    publish: Publisher | None = session.info.get(PUBLISHER_KEY)
    if not changed or publish is None:
        return
    for request_id, member_id in sorted(changed.items()):
        publish(request_id, member_id)


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    session.info.pop(_CHANGED_KEY, None)
