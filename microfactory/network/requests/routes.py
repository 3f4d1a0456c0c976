"""Fabrication requests between shops: the contract endpoints and the operators' answers.

Contract (other shops call these, authenticated by the JWS signature):
- `POST /api/v1/network/requests` (at the maker, B): a signed request;
- `POST /api/v1/network/requests/{id}/updates` (at the requester, A): a signed update.
Local (a login): send a request, list and read requests with their log, and at B accept,
counter, decline and report progress.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, status
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.accounts.models import User
from microfactory.config import Settings
from microfactory.deps import AnyUser, Now, SessionDep, SettingsDep, ShopTz, StaffUser
from microfactory.designs import remote
from microfactory.errors import BadRequestError, InvalidInputError
from microfactory.network.identity import ShopKey
from microfactory.network.requests import flows, holdings, outbox, service
from microfactory.network.requests.models import FabricationRequest
from microfactory.network.requests.schemas import (
    Accept,
    Counter,
    CounterReply,
    Decline,
    NetworkStatement,
    NetworkStatementLine,
    Progress,
    Received,
    RequestRead,
    SendRequest,
    UpdateTaken,
)
from microfactory.network.routes import ShopKeyDep
from microfactory.usage import reports

log = logging.getLogger("microfactory.network.requests")

router = APIRouter(prefix="/api/v1/network/requests", tags=["network"])
JOSE_TYPES = ("application/jose", "text/plain")
_JOSE_BODY = {
    "requestBody": {
        "required": True,
        "description": "the compact JWS; send it with Content-Type: application/jose",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


async def _jose_body(request: Request) -> bytes:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in JOSE_TYPES:
        raise BadRequestError(
            "send the compact JWS as the body, with Content-Type: application/jose"
        )
    return await request.body()


async def _read(request: Request, request_id: str | uuid.UUID, user: User) -> RequestRead:
    async with request.app.state.sessionmaker() as session:
        req = await service.get_visible(session=session, request_id=request_id, user=user)
        return service.to_read(req)


@router.post(
    "",
    response_model=Received,
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_JOSE_BODY,
)
async def receive_request(
    request: Request, session: SessionDep, shop: ShopKeyDep, now: Now
) -> Received:
    """Take another shop's signed fabrication request (public: the signature is the key).

    Refused: a bad signature 401, a replayed request 409, an expired one 422.
    """
    body = await _jose_body(request)
    req = await service.receive(session=session, shop=shop, token=body, now=now)
    return Received(id=req.id, state=req.state, shop_id=shop.shop_id)


async def send_and_deliver(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    shop: ShopKey,
    user: User,
    body: SendRequest,
    now: dt.datetime,
) -> str:
    """Check, sign and record a request, and deliver it through the outbox; return its id.

    Tried at once after the commit; if the other shop is away (or answers 5xx) the request
    stays sent, its delivery pending and retried with backoff until it expires (an hour).
    A refusal (4xx) is final: 422, and the request is kept as undelivered.
    """
    url = remote.check_url(body.shop_url) if body.shop_url else None
    design, _member = await service.sendable(
        session=session, settings=settings, user=user, body=body
    )
    content_hash = design.content_hash
    await session.commit()  # no transaction stays open while the other shop answers
    if url is None:
        assert body.shop_id is not None  # checked by SendRequest
        # Chosen with routing: the hubs' shop list gives the shop's URL.
        found = await remote.source_from_hub(
            settings=settings, shop_id=body.shop_id, content_hash=content_hash
        )
        url = found.base_url
    try:
        peer_id = await service.fetch_shop_id(url)
    except remote.RemoteError as exc:
        if body.shop_id is None:
            raise
        # Away now, but named by routing: the request is addressed to that shop's key, which
        # alone takes it, so it waits in the outbox until the shop is back.
        log.info("shop %s: keys unreadable (%s); the request is queued", body.shop_id, exc.detail)
        peer_id = body.shop_id
    if body.shop_id is not None and body.shop_id != peer_id:
        raise InvalidInputError(f"{url} publishes the key of shop {peer_id}, not of {body.shop_id}")
    req, msg = await service.send(
        session=session,
        settings=settings,
        shop=shop,
        user=user,
        body=body,
        to_shop_id=peer_id,
        peer_url=url,
        now=now,
    )
    outbox.enqueue(session=session, msg=msg, url=url + service.REQUESTS_PATH, now=now)
    request_id = req.id
    await session.commit()
    sessionmaker = request.app.state.sessionmaker
    await outbox.deliver_request(sessionmaker=sessionmaker, request_id=request_id, now=now)
    async with sessionmaker() as s2:
        sent = await service.get_visible(session=s2, request_id=request_id, user=user)
        item = sent.messages[0].outbox
        state, note = (item.state, item.note) if item is not None else ("delivered", "")
    if state == "refused":
        raise remote.RemoteError(f"the other shop did not take the request: {note}")
    return request_id


@router.post("/send", response_model=RequestRead, status_code=status.HTTP_201_CREATED)
async def send_request(
    body: SendRequest,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    shop: ShopKeyDep,
    user: AnyUser,
    now: Now,
) -> RequestRead:
    """Send a design to another shop to be made, signed by this shop (members, operators).

    The other shop is named by its base URL (and, from routing, its id, which is checked
    against the key it publishes). 422 if it refuses the request, or cannot be reached and
    was named by its URL alone. A shop named by routing that is away gets the request once
    back: its last message shows `delivery_state` "pending" meanwhile.
    """
    request_id = await send_and_deliver(request, session, settings, shop, user, body, now)
    return await _read(request, request_id, user)


@router.get("/statement", response_model=NetworkStatement)
async def network_statement(
    session: SessionDep, _staff: StaffUser, tz: ShopTz, now: Now, month: str | None = None
) -> NetworkStatement:
    """Work accepted for other shops in a month ("YYYY-MM"), at the quotes' prices (staff)."""
    month = month or now.astimezone(tz).strftime("%Y-%m")
    start, end = reports.month_bounds(month, tz)
    lines = await service.network_statement(session=session, start=start, end=end)
    return NetworkStatement(
        month=month,
        lines=[NetworkStatementLine.model_validate(line) for line in lines],
        total_cents=sum(int(line["total_cents"]) for line in lines),
    )


@router.get("/holders/{content_hash}")
async def design_holders(
    content_hash: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")],
    settings: SettingsDep,
    _user: AnyUser,
) -> dict[str, Any]:
    """Which shops of the network hold a design, as this shop's hubs know (a login).

    Answers {"content_hash", "shops": [{"shop_id", "name", "url", "title"}], "problems"}.
    """
    return await holdings.holders(settings=settings, content_hash=content_hash)


@router.get("", response_model=list[RequestRead])
async def list_requests(session: SessionDep, user: AnyUser) -> list[RequestRead]:
    """List requests: staff see every one, a member the ones sent for them."""
    return [service.to_read(r) for r in await service.list_visible(session=session, user=user)]


@router.get("/{request_id:uuid}", response_model=RequestRead)
async def get_request(request_id: uuid.UUID, session: SessionDep, user: AnyUser) -> RequestRead:
    """Show a request and its append-only message log (the member it is for, and staff)."""
    req = await service.get_visible(session=session, request_id=request_id, user=user)
    return service.to_read(req)


@router.post("/{request_id:uuid}/updates", response_model=UpdateTaken, openapi_extra=_JOSE_BODY)
async def receive_update(
    request_id: uuid.UUID, request: Request, session: SessionDep, shop: ShopKeyDep, now: Now
) -> UpdateTaken:
    """Take a signed status update from the other shop of a request (public: signed).

    At the requesting shop, the maker's updates; at the making shop, the requester's answer
    to a counter-offer (agreed, withdrawn). Refused: not signed by that shop 401, a
    replayed sequence 409, an expired update 422.
    """
    body = await _jose_body(request)
    req = await service.receive_update(
        session=session, shop=shop, request_id=request_id, token=body, now=now
    )
    taken = UpdateTaken(id=req.id, state=req.state, sequence=req.last_peer_sequence)
    if req.direction == "incoming" and req.state == "agreed":
        # At B: the requester agreed to our counter-offer. Accepted after this commit, in
        # the background: the other shop gets its answer without waiting for the import.
        await session.commit()
        flows.accept_agreed_soon(request.app, req.id)
    # The answer goes to the other shop: nothing of the member's in it.
    return taken


@router.post("/{request_id:uuid}/accept", response_model=RequestRead)
async def accept_request(
    request_id: uuid.UUID, body: Accept, request: Request, user: StaffUser, now: Now
) -> RequestRead:
    """Accept a request (operators): import the design by hash, make a job, send the quote.

    The quote is made from this shop's rates (hours and grams per piece as estimated by the
    operator) and is part of the signed acceptance. All of it is one transaction: a failure
    leaves the request unaccepted, to accept again.
    """
    req_id, _job = await flows.accept(
        request.app, user=user, request_id=request_id, body=body, now=now
    )
    return await _read(request, req_id, user)


async def _respond(
    request: Request, user: User, request_id: uuid.UUID, status_name: str, now: dt.datetime,
    **fields: str | None,
) -> RequestRead:  # fmt: skip
    settings = request.app.state.settings

    async def sign(session: AsyncSession, shop: ShopKey, req: FabricationRequest) -> None:
        await service.respond(
            session=session, settings=settings, shop=shop, req=req, status=status_name,
            now=now, **fields,  # type: ignore[arg-type]
        )  # fmt: skip

    req_id = await flows.answer(request.app, user=user, request_id=request_id, now=now, sign=sign)
    return await _read(request, req_id, user)


@router.post("/{request_id:uuid}/counter", response_model=RequestRead)
async def counter_request(
    request_id: uuid.UUID, body: Counter, request: Request, user: StaffUser, now: Now
) -> RequestRead:
    """Propose another date with a reason, and a quote with hours and grams (operators).

    If the requesting shop agrees, the request is accepted with these terms by itself.
    """
    req_id = await flows.counter(request.app, user=user, request_id=request_id, body=body, now=now)
    return await _read(request, req_id, user)


@router.post("/{request_id:uuid}/reply", response_model=RequestRead)
async def reply_to_counter(
    request_id: uuid.UUID, body: CounterReply, request: Request, user: AnyUser, now: Now
) -> RequestRead:
    """Take or turn down the other shop's counter-offer (the member it is for, or staff).

    Signed by this shop and sent to the making shop; agreeing there makes the job.
    """
    settings = request.app.state.settings

    async def sign(session: AsyncSession, shop: ShopKey, req: FabricationRequest) -> None:
        await service.reply_to_counter(
            session=session, settings=settings, shop=shop, req=req, agree=body.agree,
            now=now, reason=body.reason,
        )  # fmt: skip

    req_id = await flows.answer(request.app, user=user, request_id=request_id, now=now, sign=sign)
    return await _read(request, req_id, user)


@router.post("/{request_id:uuid}/decline", response_model=RequestRead)
async def decline_request(
    request_id: uuid.UUID, body: Decline, request: Request, user: StaffUser, now: Now
) -> RequestRead:
    """Decline a request, with a reason (operators)."""
    return await _respond(request, user, request_id, "declined", now, reason=body.reason)


@router.post("/{request_id:uuid}/progress", response_model=RequestRead)
async def report_progress(
    request_id: uuid.UUID, body: Progress, request: Request, user: StaffUser, now: Now
) -> RequestRead:
    """Tell the requesting shop the job started, finished (good or bad) or was collected."""
    if body.status == "finished" and body.outcome is None:
        raise InvalidInputError('a finished request needs an "outcome": good or bad')
    if body.status != "finished" and body.outcome is not None:
        raise InvalidInputError('only a finished request has an "outcome"')
    return await _respond(
        request, user, request_id, body.status, now, reason=body.reason, outcome=body.outcome
    )
