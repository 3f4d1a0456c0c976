"""Request flows that span transactions and the network: each owns its transactions.

The services only flush; a flow opens the session, commits once, and runs the side effects
after the commit: the job's G-code preparation, and delivering the signed answer (through
the outbox, so an answer the other shop did not take is retried).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI

from microfactory.accounts.models import User
from microfactory.db import utcnow
from microfactory.designs import remote
from microfactory.designs.storage import discard
from microfactory.errors import DomainError
from microfactory.network import identity
from microfactory.network.requests import outbox, service
from microfactory.network.requests.models import FabricationRequest
from microfactory.network.requests.schemas import Accept, Counter

log = logging.getLogger("microfactory.network.requests")

_background: set[asyncio.Task[Any]] = set()  # kept referenced until done


async def accept(
    app: FastAPI, *, user: User, request_id: str | uuid.UUID, body: Accept, now: dt.datetime
) -> tuple[str, int]:
    """Accept a request: fetch its design (no transaction open), then one transaction.

    Returns (request id, job id). A failure anywhere leaves the request unaccepted, with
    no job, no design and no fetched file kept: it can be accepted again.
    """
    sessionmaker = app.state.sessionmaker
    settings = app.state.settings
    shop = await asyncio.to_thread(identity.shop_key, settings.data_dir)
    async with sessionmaker() as session:
        source = await service.accept_source(session=session, user=user, request_id=request_id)
    # No transaction or connection is held while the other shop serves the design.
    fetched = await remote.fetch_design(settings=settings, source=source) if source else None
    try:
        async with sessionmaker() as session, session.begin():  # the one transaction
            req, job, _msg = await service.accept(
                session=session, settings=settings, shop=shop, user=user,
                request_id=request_id, body=body, now=now, fetched=fetched,
            )  # fmt: skip
            req_id, job_id = req.id, job.id
    except BaseException:
        if fetched is not None:  # not committed: the copies fetched are nobody's
            await asyncio.to_thread(discard, fetched.files)
        raise
    # Side effects, after the commit.
    app.state.preparer.submit(job_id)
    await outbox.deliver_request(sessionmaker=sessionmaker, request_id=req_id, now=now)
    return req_id, job_id


async def counter(
    app: FastAPI,
    *,
    user: User,
    request_id: str | uuid.UUID,
    body: Counter,
    now: dt.datetime,
) -> str:
    """Counter with a date and a quote: the design is fetched first, priced, then signed."""
    sessionmaker = app.state.sessionmaker
    settings = app.state.settings
    shop = await asyncio.to_thread(identity.shop_key, settings.data_dir)
    async with sessionmaker() as session:
        source = await service.accept_source(
            session=session, user=user, request_id=request_id, status="countered"
        )
    fetched = await remote.fetch_design(settings=settings, source=source) if source else None
    try:
        async with sessionmaker() as session, session.begin():
            req = await service.get_visible(
                session=session, request_id=request_id, user=user, lock=True
            )
            await service.counter(
                session=session, settings=settings, shop=shop, user=user, req=req,
                proposed_date=body.date.isoformat(), reason=body.reason, terms=body.terms(),
                now=now, fetched=fetched,
            )  # fmt: skip
            req_id = req.id
    except BaseException:
        if fetched is not None:
            await asyncio.to_thread(discard, fetched.files)
        raise
    await outbox.deliver_request(sessionmaker=sessionmaker, request_id=req_id, now=now)
    return req_id


async def answer(
    app: FastAPI,
    *,
    user: User,
    request_id: str | uuid.UUID,
    now: dt.datetime,
    sign: Callable[..., Awaitable[Any]],
) -> str:
    """Sign an answer in one transaction (`sign(session, shop, req)`), then deliver it."""
    sessionmaker = app.state.sessionmaker
    settings = app.state.settings
    shop = await asyncio.to_thread(identity.shop_key, settings.data_dir)
    async with sessionmaker() as session, session.begin():
        req = await service.get_visible(
            session=session, request_id=request_id, user=user, lock=True
        )
        await sign(session, shop, req)
        req_id = req.id
    await outbox.deliver_request(sessionmaker=sessionmaker, request_id=req_id, now=now)
    return req_id


async def accept_agreed(app: FastAPI, request_id: str) -> None:
    """At B: the requester agreed to the counter-offer; accept it with the kept terms."""
    async with app.state.sessionmaker() as session:
        req = await session.get(FabricationRequest, request_id)
        if req is None or req.state != "agreed" or req.direction != "incoming":
            return
        terms = dict(req.terms or {})
        operator = await session.get(User, terms.get("operator_id") or 0)
    if operator is None:
        log.warning("request %s: agreed, but the operator who countered is gone", request_id)
        return
    body = Accept.model_validate(terms.get("accept") or {})
    try:
        await accept(app, user=operator, request_id=request_id, body=body, now=utcnow())
    except DomainError as exc:  # left agreed: an operator accepts or declines it by hand
        log.warning("request %s: accepting on agreement failed: %s", request_id, exc.detail)
    else:
        log.info("request %s: accepted on the requesting shop's agreement", request_id)


def accept_agreed_soon(app: FastAPI, request_id: str) -> None:
    """Run `accept_agreed` in the background (the other shop's POST is answered first)."""
    task = asyncio.get_running_loop().create_task(accept_agreed(app, request_id))
    _background.add(task)
    task.add_done_callback(_background.discard)
