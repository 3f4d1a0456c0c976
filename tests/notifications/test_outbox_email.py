"""The outbox sends email after commit, one message per short transaction, to a real SMTP peer.

The peer is a small SMTP server on a local socket that speaks the protocol's happy path
(greeting, EHLO, MAIL, RCPT, DATA, QUIT) and refuses one recipient, as a mail server would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select, update

from microfactory.accounts.models import User
from microfactory.notifications import service
from microfactory.notifications.models import Notification
from tests.conftest import UserFactory

pytestmark = pytest.mark.timeout(60)


@dataclass
class SmtpPeer:
    """What the server saw, and a hook run while a message is being received."""

    port: int = 0
    refuse: set[str] = field(default_factory=set)
    messages: list[tuple[str, str]] = field(default_factory=list)  # (recipient, data)
    on_data: Callable[[str], Awaitable[None]] | None = None


async def _serve(
    peer: SmtpPeer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    def say(line: str) -> None:
        writer.write(line.encode() + b"\r\n")

    say("220 test.local ESMTP")
    rcpt = ""
    while line := (await reader.readline()).decode().rstrip("\r\n"):
        verb = line.split(" ", 1)[0].upper()
        if verb in ("EHLO", "HELO"):
            say("250 test.local")
        elif verb == "MAIL":
            say("250 OK")
        elif verb == "RCPT":
            rcpt = line.split(":", 1)[1].strip().strip("<>")
            say("550 no such mailbox" if rcpt in peer.refuse else "250 OK")
        elif verb == "DATA":
            say("354 end with <CRLF>.<CRLF>")
            await writer.drain()
            data = []
            while (chunk := (await reader.readline()).decode()) not in (".\r\n", ""):
                data.append(chunk)
            if peer.on_data is not None:
                await peer.on_data(rcpt)
            peer.messages.append((rcpt, "".join(data)))
            say("250 queued")
        elif verb == "QUIT":
            say("221 bye")
            await writer.drain()
            break
        else:
            say("250 OK")  # RSET, NOOP
        await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


@pytest.fixture
async def smtp_peer() -> AsyncIterator[SmtpPeer]:
    peer = SmtpPeer()
    server = await asyncio.start_server(lambda r, w: _serve(peer, r, w), "127.0.0.1", 0)
    peer.port = server.sockets[0].getsockname()[1]
    async with server:
        yield peer


async def _set_email(app: Any, user_id: int, email: str | None) -> None:
    async with app.state.sessionmaker() as session, session.begin():
        await session.execute(update(User).where(User.id == user_id).values(email=email))


async def _notes(app: Any) -> dict[int, Notification]:
    async with app.state.sessionmaker() as session:
        rows = (await session.execute(select(Notification))).scalars()
        return {n.user_id: n for n in rows}


async def test_email_is_sent_outside_transactions_one_message_at_a_time(
    app: Any, make_user: UserFactory, smtp_peer: SmtpPeer
) -> None:
    ok, _ = await make_user("member")
    refused, _ = await make_user("member")
    no_address, _ = await make_user("member")
    await _set_email(app, ok.id, "ok@example.org")
    await _set_email(app, refused.id, "gone@example.org")
    smtp_peer.refuse.add("gone@example.org")
    async with app.state.sessionmaker() as session, session.begin():
        for user in (ok, refused, no_address):
            await service.enqueue(
                session=session, user_id=user.id, kind="test", subject=f"hello {user.username}"
            )

    seen_while_sending: list[tuple[int, bool]] = []

    async def look(rcpt: str) -> None:
        # While SMTP talks, the attempt is already committed and nothing is held open:
        # another session reads (and could write) the outbox.
        if rcpt == "ok@example.org":
            note = (await _notes(app))[ok.id]
            seen_while_sending.append((note.attempts, note.sent_at is None))
            async with app.state.sessionmaker() as session, session.begin():
                await service.enqueue(session=session, user_id=ok.id, kind="test", subject="x")

    smtp_peer.on_data = look
    settings = app.state.settings.model_copy(
        update={"smtp_url": f"smtp://127.0.0.1:{smtp_peer.port}"}
    )
    sent = await service.deliver_pending(sessionmaker=app.state.sessionmaker, settings=settings)
    assert sent == 1
    assert seen_while_sending == [(1, True)]
    assert [(to, "hello" in data) for to, data in smtp_peer.messages] == [("ok@example.org", True)]
    notes = await _notes(app)
    assert notes[refused.id].sent_at is None
    assert notes[refused.id].attempts == 1
    assert "no such mailbox" in (notes[refused.id].last_error or "")
    assert notes[no_address.id].attempts == service.MAX_ATTEMPTS  # nothing to retry
    assert notes[no_address.id].last_error == "the member has no email address"

    # The next run retries the refused one and sends the new one; the sent one is not re-sent.
    smtp_peer.on_data = None
    smtp_peer.refuse.clear()
    assert (
        await service.deliver_pending(sessionmaker=app.state.sessionmaker, settings=settings) == 2
    )
    assert sorted(to for to, _ in smtp_peer.messages) == [
        "gone@example.org",
        "ok@example.org",
        "ok@example.org",
    ]
    async with app.state.sessionmaker() as session:
        attempts = sorted((await session.execute(select(Notification.attempts))).scalars())
    assert attempts == [1, 1, 2, service.MAX_ATTEMPTS]
