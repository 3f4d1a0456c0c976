"""The outbox delivers after commit, outside any transaction, and retries with backoff: email
to a real SMTP server (aiosmtpd) and push messages through apprise to a real HTTP endpoint.

The delivery rules do not depend on the database, so these run on SQLite only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select, update

from microfactory.accounts.models import User
from microfactory.db import utcnow
from microfactory.notifications import service
from microfactory.notifications.models import Notification, NotificationDelivery
from tests.browser.conftest import free_port
from tests.conftest import UserFactory

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.parametrize("db_url", ["sqlite"], indirect=True),
]


@dataclass
class Mailbox:
    """What the SMTP server received, and the recipients it refuses."""

    refuse: set[str] = field(default_factory=set)
    messages: list[tuple[str, str]] = field(default_factory=list)  # (recipient, content)

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook names)
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address in self.refuse:
            return "550 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        content = envelope.content.decode("utf-8", "replace")
        self.messages.extend((to, content) for to in envelope.rcpt_tos)
        return "250 queued"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield box, controller.port
    finally:
        controller.stop()


@dataclass
class Webhook:
    """A local HTTP endpoint: what apprise posted, and the status codes to answer with."""

    port: int = 0
    statuses: list[int] = field(default_factory=list)  # answered in turn, then 200
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            hook.received.append((self.path, json.loads(self.rfile.read(length) or b"{}")))
            code = hook.statuses.pop(0) if hook.statuses else 200
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


async def _set_email(app: Any, user_id: int, email: str | None) -> None:
    async with app.state.sessionmaker() as session, session.begin():
        await session.execute(update(User).where(User.id == user_id).values(email=email))


async def _deliveries(app: Any) -> list[NotificationDelivery]:
    async with app.state.sessionmaker() as session:
        rows = await session.execute(select(NotificationDelivery).order_by(NotificationDelivery.id))
        return list(rows.scalars())


async def test_email_goes_to_a_real_smtp_server_and_a_refusal_is_retried_with_backoff(
    app: Any, make_user: UserFactory, smtp_server: tuple[Mailbox, int]
) -> None:
    box, port = smtp_server
    ok, _ = await make_user("member")
    refused, _ = await make_user("member")
    no_address, _ = await make_user("member")
    await _set_email(app, ok.id, "ok@example.org")
    await _set_email(app, refused.id, "gone@example.org")
    box.refuse.add("gone@example.org")
    now = utcnow()
    async with app.state.sessionmaker() as session, session.begin():
        for user in (ok, refused, no_address):
            await service.enqueue(
                session=session, user_id=user.id, kind="test", subject=f"hello {user.username}",
                body="See you at the shop.", now=now,
            )  # fmt: skip
    # No address, nothing to send to: the message is on the dashboard only.
    assert len(await _deliveries(app)) == 2
    settings = app.state.settings.model_copy(
        update={"smtp_url": f"smtp://127.0.0.1:{port}", "notify_max_attempts": 2}
    )
    sent = await service.deliver_pending(
        sessionmaker=app.state.sessionmaker, settings=settings, now=now
    )
    assert sent == 1
    assert [to for to, _ in box.messages] == ["ok@example.org"]
    assert f"Subject: hello {ok.username}" in box.messages[0][1]
    assert "See you at the shop." in box.messages[0][1]
    first, second = await _deliveries(app)
    assert first.sent_at is not None
    assert first.done_at is not None
    assert second.sent_at is None
    assert second.done_at is None
    assert second.attempts == 1
    assert "no such mailbox" in (second.last_error or "")
    assert second.next_attempt_at == now + dt.timedelta(seconds=30)  # the first backoff

    # Before the backoff passed: nothing. After: the retry; the sent one is not re-sent.
    again = service.deliver_pending
    assert await again(sessionmaker=app.state.sessionmaker, settings=settings, now=now) == 0
    later = now + dt.timedelta(seconds=31)
    assert await again(sessionmaker=app.state.sessionmaker, settings=settings, now=later) == 0
    _, second = await _deliveries(app)
    assert second.attempts == 2
    assert second.done_at is not None
    box.refuse.clear()
    much_later = now + dt.timedelta(hours=7)
    assert await again(sessionmaker=app.state.sessionmaker, settings=settings, now=much_later) == 0
    assert [to for to, _ in box.messages] == ["ok@example.org"]
    async with app.state.sessionmaker() as session:
        notes = {n.user_id: n for n in (await session.execute(select(Notification))).scalars()}
    assert notes[ok.id].sent_at is not None
    assert notes[refused.id].sent_at is None
    assert "no such mailbox" in (notes[refused.id].last_error or "")


async def test_push_through_apprise_to_a_shop_channel_retries_and_never_shows_the_secret(
    app: Any,
    client: httpx.AsyncClient,
    make_user: UserFactory,
    webhook: Webhook,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, admin = await make_user("admin", username="push-admin")
    member_user, member = await make_user("member", username="push-member")
    secret = "tok3n-s3cr3t-value"
    url = f"json://127.0.0.1:{webhook.port}/hook/{secret}"
    bad = await client.post(
        "/api/v1/notifications/channels", json={"name": "X", "url": "nope://x"}, headers=admin
    )
    assert bad.status_code == 422
    assert "not an apprise URL" in bad.text
    refused = await client.post(
        "/api/v1/notifications/channels", json={"name": "Hook", "url": url}, headers=member
    )
    assert refused.status_code == 403
    made = await client.post(
        "/api/v1/notifications/channels", json={"name": "Shop hook", "url": url}, headers=admin
    )
    assert made.status_code == 201, made.text
    channel = made.json()
    listed = (await client.get("/api/v1/notifications/channels", headers=admin)).text
    assert secret not in made.text
    assert secret not in listed
    assert channel["url_masked"] == f"json://127.0.0.1:{webhook.port}/ho…/to…"

    prefs = (await client.get("/api/v1/notifications/preferences", headers=member)).json()
    assert prefs["available_channels"] == [{"id": channel["id"], "name": "Shop hook"}]
    assert secret not in json.dumps(prefs)
    own = await client.put(
        "/api/v1/notifications/preferences",
        json={"events": ["finished"], "own_url": f"json://127.0.0.1:{webhook.port}/mine"},
        headers=member,
    )
    assert own.status_code == 422
    assert "does not allow members' own push URLs" in own.text
    saved = await client.put(
        "/api/v1/notifications/preferences",
        json={"events": ["finished"], "email": False, "channel_ids": [channel["id"]]},
        headers=member,
    )
    assert saved.status_code == 200, saved.text

    now = utcnow()
    async with app.state.sessionmaker() as session, session.begin():
        await service.enqueue(
            session=session, user_id=member_user.id, kind="job_finished",
            subject="Your job 'Hook' finished", body="Collect it.", now=now,
        )  # fmt: skip
    webhook.statuses = [500]
    caplog.set_level(logging.INFO)  # the server's level: at DEBUG, urllib3 prints request paths
    deliver = service.deliver_pending
    settings = app.state.settings
    assert await deliver(sessionmaker=app.state.sessionmaker, settings=settings, now=now) == 0
    (delivery,) = await _deliveries(app)
    assert delivery.attempts == 1
    assert delivery.sent_at is None
    assert delivery.last_error
    assert secret not in delivery.last_error
    later = now + service.backoff(1) + dt.timedelta(seconds=1)
    assert await deliver(sessionmaker=app.state.sessionmaker, settings=settings, now=later) == 1
    assert [path for path, _ in webhook.received] == [f"/hook/{secret}"] * 2
    payload = webhook.received[-1][1]
    assert payload["title"] == "Your job 'Hook' finished"
    assert payload["message"] == "Collect it."
    (delivery,) = await _deliveries(app)
    assert delivery.sent_at is not None
    assert delivery.attempts == 2
    assert "failed (attempt 1 of 5)" in caplog.text  # the failure was logged...
    assert secret not in caplog.text  # ...without the URL's secret

    gone = await client.delete(f"/api/v1/notifications/channels/{channel['id']}", headers=admin)
    assert gone.status_code == 204
    assert await _deliveries(app) == []  # a removed channel's deliveries go with it
