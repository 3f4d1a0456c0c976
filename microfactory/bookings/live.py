"""Tell the live stream when machine time changes: bookings, maintenance, closures, hours.

Any committed change to those rows, whichever service made it (a member booking, an operator
blocking maintenance, the no-show release), is published as a `booking` event after the
commit, so an open calendar refetches its events. The event says only which machine changed
(0: every machine, for closures and opening hours), never who booked.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from microfactory.bookings.models import Booking, Closure, MaintenanceBlock, OpeningHours

#: key in a session's `info` of the callable that puts a machine id on the live stream
PUBLISHER_KEY = "booking_publisher"
_CHANGED_KEY = "bookings_changed"
ALL_MACHINES = 0

Publisher = Callable[[int], None]


@event.listens_for(Session, "after_flush")
def _track(session: Session, _context: Any) -> None:
    if PUBLISHER_KEY not in session.info:
        return  # a session outside the app (CLI, migrations): nobody listens
    changed: set[int] | None = None
    for obj in itertools.chain(session.new, session.dirty, session.deleted):
        if isinstance(obj, Booking | MaintenanceBlock):
            machine_id = obj.machine_id
        elif isinstance(obj, Closure | OpeningHours):
            machine_id = ALL_MACHINES
        else:
            continue
        if changed is None:
            changed = session.info.setdefault(_CHANGED_KEY, set())
        changed.add(int(machine_id))


@event.listens_for(Session, "after_commit")
def _publish(session: Session) -> None:
    changed: set[int] | None = session.info.pop(_CHANGED_KEY, None)
    publish: Publisher | None = session.info.get(PUBLISHER_KEY)
    if not changed or publish is None:
        return
    for machine_id in sorted(changed):
        publish(machine_id)


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    session.info.pop(_CHANGED_KEY, None)
