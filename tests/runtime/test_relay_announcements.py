"""Announcements cross processes through PostgreSQL: a machine renamed, then changed again at
once, and a new message, reach another process's live stream, each one, in order."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from microfactory.accounts import service as account_service
from microfactory.accounts.models import TokenKind, User
from microfactory.runtime.fleet import Fleet
from microfactory.runtime.remote import JobEventRelay, MachineHost, libpq_dsn
from tests.conftest import PG_URL, require_or_skip


class _Updates:
    """A process's live updates, subscribed from the start (a hub counts a subscriber only
    once it waits for its first update)."""

    def __init__(self, fleet: Fleet) -> None:
        self._it = fleet.subscribe()
        self._next: asyncio.Future[Any] = asyncio.ensure_future(anext(self._it))

    async def next(self) -> Any:
        item = await asyncio.wait_for(self._next, 20)
        self._next = asyncio.ensure_future(anext(self._it))
        return item

    async def aclose(self) -> None:
        self._next.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await self._next
        await self._it.aclose()  # type: ignore[attr-defined]


async def _subscribed(fleet: Fleet) -> _Updates:
    updates = _Updates(fleet)
    while not fleet.hub._queues:  # noqa: ASYNC110 (the hub tells no one it was joined)
        await asyncio.sleep(0.01)
    return updates


@pytest.mark.postgres
async def test_machine_announcements_and_messages_reach_every_other_process() -> None:
    require_or_skip(bool(PG_URL), "PostgreSQL is not running (MICROFACTORY_TEST_POSTGRES_URL)")
    assert PG_URL
    dsn = libpq_dsn(PG_URL)
    admins_worker, members_worker = Fleet(), Fleet()  # two processes' streams
    sender, receiver = JobEventRelay(dsn, admins_worker), JobEventRelay(dsn, members_worker)
    await sender.start()
    await receiver.start()
    updates = await _subscribed(members_worker)
    try:
        # Within the same few milliseconds, as an admin renaming then disabling a machine:
        # the machine host coalesces status changes every 100 ms, announcements are not.
        sender.forward_machine(7, {"state": "idle", "name": "Prusa 2", "edited": True})
        sender.forward_machine(7, {"state": "offline", "name": "Prusa 2", "edited": True})
        sender.forward_machine(8, {"state": "offline", "message": "removed", "removed": True})
        sender.forward_message(42, "booking_cancelled")
        got: list[Any] = [await updates.next() for _ in range(4)]
    finally:
        await updates.aclose()
        await sender.stop()
        await receiver.stop()
    assert got == [
        ("machine", 7, {"state": "idle", "name": "Prusa 2", "edited": True}),
        ("machine", 7, {"state": "offline", "name": "Prusa 2", "edited": True}),
        ("machine", 8, {"state": "offline", "message": "removed", "removed": True}),
        ("notification", 42, {"kind": "booking_cancelled"}),
    ]


@pytest.fixture
def db_url(postgresql_database: str) -> str:
    """PostgreSQL only: the relay is LISTEN/NOTIFY."""
    from tests.conftest import _truncate

    _truncate(postgresql_database)
    return postgresql_database


@pytest.mark.postgres
async def test_a_rename_by_api_or_admin_form_reaches_another_workers_stream(
    app: Any, client: Any, make_user: Any, settings: Any
) -> None:
    from tests.admin.conftest import CSRF

    admin_user, admin = await make_user("admin")
    other_worker = Fleet()
    relay = JobEventRelay(libpq_dsn(settings.sync_database_url), other_worker)
    await relay.start()
    updates = await _subscribed(other_worker)
    try:
        body = {"name": "Laser", "kind": "laser_cutter", "driver": "manual"}
        resp = await client.post("/api/v1/machines", json=body, headers=admin)
        assert resp.status_code == 201, resp.text
        machine_id = resp.json()["id"]
        url = f"/api/v1/machines/{machine_id}"
        assert (await client.patch(url, json={"name": "Laser 2"}, headers=admin)).is_success
        # The admin form, on a dashboard session (its cookie and the CSRF one).
        async with app.state.sessionmaker() as session:
            user = await session.get(User, admin_user.id)
            assert user is not None
            token, _ = await account_service.issue_token(
                session=session, user=user, kind=TokenKind.WEB
            )
            await session.commit()
        client.cookies.set("mf_session", token)
        client.cookies.set("mf_csrf", CSRF)
        form = {"csrf_token": CSRF, "name": "Laser 3", "kind": "laser_cutter", "driver": "manual"}
        resp = await client.post(f"/admin/machines/{machine_id}", data=form)
        assert resp.status_code == 303, resp.text
        names: list[str] = []
        while len(names) < 3:
            kind, mid, status = await updates.next()
            if kind == "machine" and mid == machine_id:
                names.append(status["name"])
    finally:
        await updates.aclose()
        await relay.stop()
    assert names == ["Laser", "Laser 2", "Laser 3"]


async def test_the_machine_host_publishes_statuses_not_announcements() -> None:
    fleet = Fleet()
    host = MachineHost(fleet, None, "postgresql://unused")  # type: ignore[arg-type]
    collect = asyncio.create_task(host._collect())
    while not fleet.hub._queues:  # noqa: ASYNC110 (the hub tells no one it was joined)
        await asyncio.sleep(0.01)
    fleet.publish_status(3, {"state": "printing"})
    fleet.publish_status(3, {"state": "printing", "name": "Prusa 2", "edited": True})
    fleet.publish_status(4, {"state": "offline", "message": "removed", "removed": True})
    fleet.publish_status(5, {"state": "idle"})
    while 5 not in host._changed:  # noqa: ASYNC110 (the collector tells no one)
        await asyncio.sleep(0.01)
    collect.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await collect
    assert host._changed == {3: {"state": "printing"}, 5: {"state": "idle"}}
