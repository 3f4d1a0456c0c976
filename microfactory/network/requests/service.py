"""Fabrication requests between shops: send, receive, answer, report progress, keep the log.

Shop A (the requester's) keeps an `outgoing` request; shop B (the maker) an `incoming` one
under the same id. Every message either side signs or receives is appended to the request's
log with its JWS, never changed. Delivering a message to the other shop happens after the
commit (`deliver`), and how it went is noted on the message.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import re
import uuid
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.accounts.models import Role, User
from microfactory.config import Settings
from microfactory.costs import service as costs_service
from microfactory.designs import remote
from microfactory.designs import service as design_service
from microfactory.designs.licences import licence_flags
from microfactory.designs.models import Design, Visibility
from microfactory.errors import (
    ConflictError,
    InvalidInputError,
    NotAuthenticatedError,
    NotFoundError,
)
from microfactory.jobs import preparation
from microfactory.jobs.models import Job
from microfactory.machines.models import MachineKind
from microfactory.machines.schemas import mask_url
from microfactory.network import report
from microfactory.network import service as network_service
from microfactory.network.identity import ShopKey
from microfactory.network.requests import signing
from microfactory.network.requests.models import (
    FabricationRequest,
    PeerKey,
    RequestMessage,
)
from microfactory.network.requests.schemas import (
    Accept,
    MessageRead,
    RequestRead,
    SendRequest,
)

log = logging.getLogger("microfactory.network.requests")

REQUESTS_PATH = "/api/v1/network/requests"
KEYS_PATH = "/api/v1/network/keys"
TTL_S = 3600  # a request is valid for an hour after it is signed
# An update or reply is retried while the other shop is away (outbox.py) until it expires:
# a day covers a shop down overnight; replays are refused by sequence, not by expiry.
UPDATE_TTL_S = 86400
TIMEOUT = httpx.Timeout(15.0, connect=5.0)
_HASH = re.compile(r"^[0-9a-f]{64}$")
# Which update may follow which state, at both shops.
# "undelivered": A noted a failed delivery, yet B may have taken the request (a timeout).
# "agreed"/"withdrawn": A's member took or turned down B's counter-offer.
AFTER: dict[str, set[str]] = {
    "accepted": {"sent", "undelivered", "received", "countered", "agreed"},
    "countered": {"sent", "undelivered", "received", "countered"},
    "declined": {"sent", "undelivered", "received", "countered", "agreed"},
    "agreed": {"countered"},
    "withdrawn": {"countered"},
    "started": {"accepted"},
    "finished": {"started"},
    "collected": {"finished"},
}
# Who signs which status: the making shop (B), or the requesting shop (A).
FROM_MAKER = ("accepted", "countered", "declined", "started", "finished", "collected")
FROM_REQUESTER = ("agreed", "withdrawn")


def updates_url(req: FabricationRequest) -> str:
    """Return where the other shop takes this request's signed updates."""
    return f"{req.peer_url}{REQUESTS_PATH}/{req.id}/updates"


# -- reading ---------------------------------------------------------------------------------


def to_read(req: FabricationRequest) -> RequestRead:
    """Return a request with its log."""
    return RequestRead(
        id=req.id,
        direction=req.direction,
        state=req.state,
        peer_shop_id=req.peer_shop_id,
        peer_url=req.peer_url,
        design_hash=req.design_hash,
        design_title=req.design_title,
        parameters=dict(req.parameters or {}),
        material=req.material,
        quantity=req.quantity,
        due_date=req.due_date,
        requester=req.requester,
        contact=req.contact,
        member_id=req.member_id,
        job_id=req.job_id,
        design_id=req.design_id,
        quote=req.quote,
        outcome=req.outcome,
        proposed_date=_proposed_date(req),
        created_at=req.created_at,
        updated_at=req.updated_at,
        messages=[
            MessageRead(
                id=m.id,
                at=m.at,
                direction=m.direction,
                kind=m.kind,
                sequence=m.sequence,
                payload=dict(m.payload),
                jws=m.jws,
                delivery=m.delivery,
                delivery_state=m.outbox.state if m.outbox is not None else None,
                delivery_attempts=m.outbox.attempts if m.outbox is not None else 0,
                next_attempt_at=(
                    m.outbox.next_attempt_at
                    if m.outbox is not None and m.outbox.state == "pending"
                    else None
                ),
            )
            for m in req.messages
        ],
    )


def _proposed_date(req: FabricationRequest) -> str | None:
    """Return the date of the counter-offer standing or agreed, if any."""
    for m in reversed(req.messages):
        if m.kind == "countered":
            return str(m.payload.get("proposedDate") or "") or None
    return None


async def get_visible(
    *, session: AsyncSession, request_id: str | uuid.UUID, user: User, lock: bool = False
) -> FabricationRequest:
    """Return a request the user may see: staff see all, a member the ones sent for them."""
    request_id = str(request_id)
    req = await _get(session, request_id, lock=lock)
    if req is None or not (user.is_staff or req.member_id == user.id):
        raise NotFoundError(f"request {request_id} not found")
    return req


async def _get(
    session: AsyncSession, request_id: str, *, lock: bool = False
) -> FabricationRequest | None:
    stmt = select(FabricationRequest).where(FabricationRequest.id == request_id)
    if lock:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_visible(*, session: AsyncSession, user: User) -> list[FabricationRequest]:
    """Return the requests the user may see, newest first."""
    stmt = select(FabricationRequest).order_by(FabricationRequest.created_at.desc()).limit(200)
    if not user.is_staff:
        stmt = stmt.where(FabricationRequest.member_id == user.id)
    return list((await session.execute(stmt)).scalars())


# -- helpers ---------------------------------------------------------------------------------


def pseudonym(shop: ShopKey, user_id: int) -> str:
    """Return a member's pseudonymous requester id: an HMAC of their id under the shop's key.

    Stable for a member at one shop, unlinkable to their username by anyone else.
    """
    secret = str(shop.key.as_dict(private=True)["d"]).encode()
    digest = hmac.new(secret, f"requester:{user_id}".encode(), hashlib.sha256).hexdigest()
    return digest[:32]


def _message(
    req: FabricationRequest,
    *,
    direction: str,
    kind: str,
    signed: str,
    payload: dict[str, Any],
    at: dt.datetime,
) -> RequestMessage:
    msg = RequestMessage(
        request_id=req.id,
        at=at,
        direction=direction,
        kind=kind,
        sequence=int(payload["sequence"]),
        payload=payload,
        jws=signed,
    )
    req.messages.append(msg)
    return msg


async def _own_url(session: AsyncSession, settings: Settings) -> str:
    profile = await network_service.get_profile(session=session, settings=settings)
    return profile.url.rstrip("/")


async def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False, trust_env=False)


async def fetch_shop_id(url: str) -> str:
    """Return another shop's id, read from its JWKS (422 if it cannot be read)."""
    await remote._check_host(url)  # no link-local (cloud metadata) or reserved addresses
    try:
        async with await _client() as client:
            resp = await client.get(url + KEYS_PATH, headers={"Accept": "application/json"})
        keys = resp.json()["keys"] if resp.status_code == 200 else None
        kid = keys[0]["kid"] if isinstance(keys, list) and keys else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise remote.RemoteError(
            f"cannot read the keys of {mask_url(url)}: {type(exc).__name__}"
        ) from None
    if not isinstance(kid, str):
        raise remote.RemoteError(f"{mask_url(url)} publishes no shop key at {KEYS_PATH}")
    return kid


async def deliver(url: str, token: str) -> tuple[int | None, str]:
    """POST a signed message; return the HTTP status (None if unreachable) and a note."""
    try:
        await remote._check_host(url)
    except remote.RemoteError as exc:
        return None, exc.detail[:300]
    try:
        async with await _client() as client:
            resp = await client.post(
                url,
                content=token.encode("ascii"),
                headers={"Content-Type": "application/jose", "Accept": "application/json"},
            )
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: cannot reach {mask_url(url)}"
    try:
        body = resp.json()
        detail = body.get("detail") if isinstance(body, dict) else None
    except ValueError:
        detail = None
    note = f"HTTP {resp.status_code}" + (f": {str(detail)[:250]}" if detail else "")
    return resp.status_code, note


async def note_delivery(
    *, session: AsyncSession, message_id: int, status: int | None, note: str
) -> None:
    """Record how delivering a sent message went."""
    msg = await session.get(RequestMessage, message_id)
    if msg is not None:
        msg.delivery = note[:300]
        await session.flush()


async def note_undelivered(*, session: AsyncSession, message_id: int) -> None:
    """Keep a request the other shop refused, or never took before it expired, as undelivered.

    Only the request itself (not a later message): its state says it never arrived. Should
    the other shop have taken it after all (an answer lost on the way back), its updates
    are still taken: `AFTER` lets them follow "undelivered".
    """
    msg = await session.get(RequestMessage, message_id)
    if msg is None or msg.kind != "request" or msg.direction != "sent":
        return
    req = await _get(session, msg.request_id)
    if req is not None and req.state == "sent":
        req.state = "undelivered"
        await session.flush()


# -- at A: sending -------------------------------------------------------------------------


async def sendable(
    *, session: AsyncSession, settings: Settings, user: User, body: SendRequest
) -> tuple[Design, int]:
    """Return the design to send and the member it is sent for, or refuse (404, 422)."""
    member_id = user.id
    if body.member_id is not None and body.member_id != user.id:
        if not user.is_staff:
            raise InvalidInputError("only operators send requests on another member's behalf")
        member = await session.get(User, body.member_id)
        if member is None:
            raise NotFoundError(f"user {body.member_id} not found")
        member_id = member.id
    design = await design_service.get_visible_or_raise(
        session=session, design_id=body.design_id, user=user
    )
    if not settings.network_publish or design.visibility != Visibility.PUBLIC:
        raise InvalidInputError(
            "the other shop fetches the design by its hash: make it public, with network "
            "publishing on (MICROFACTORY_NETWORK_PUBLISH)"
        )
    return design, member_id


async def send(
    *,
    session: AsyncSession,
    settings: Settings,
    shop: ShopKey,
    user: User,
    body: SendRequest,
    to_shop_id: str,
    peer_url: str,
    now: dt.datetime,
) -> tuple[FabricationRequest, RequestMessage]:
    """Record and sign a request for another shop (delivered after the commit)."""
    design, member_id = await sendable(session=session, settings=settings, user=user, body=body)
    if to_shop_id == shop.shop_id:
        raise InvalidInputError("that is this shop; choose another one")
    request_id = str(uuid.uuid4())
    issued, expires = signing.times(now, TTL_S)
    payload: dict[str, Any] = {
        "type": signing.REQUEST_TYPE,
        "id": request_id,
        "shop_id": shop.shop_id,
        "key": shop.public_jwk(),
        "url": await _own_url(session, settings),
        "to": to_shop_id,
        "sequence": await report.next_sequence(session=session, now=now),
        "issuedAt": issued,
        "expiresAt": expires,
        "design": {"hash": design.content_hash, "title": design.title},
        "parameters": body.parameters,
        "material": body.material,
        "quantity": body.quantity,
        "dueDate": body.due_date.isoformat(),
        "requester": pseudonym(shop, member_id),
        "contact": body.contact or None,
    }
    signed = signing.sign(payload, shop)
    req = FabricationRequest(
        id=request_id,
        direction="outgoing",
        state="sent",
        peer_shop_id=to_shop_id,
        peer_url=peer_url,
        design_hash=design.content_hash,
        design_title=design.title,
        parameters=body.parameters,
        material=body.material,
        quantity=body.quantity,
        due_date=payload["dueDate"],
        requester=payload["requester"],
        contact=payload["contact"],
        member_id=member_id,
        design_id=design.id,
        last_peer_sequence=0,
        created_at=now,
        updated_at=now,
        messages=[],
    )
    session.add(req)
    msg = _message(req, direction="sent", kind="request", signed=signed, payload=payload, at=now)
    await session.flush()
    return req, msg


# -- at B: receiving -----------------------------------------------------------------------


def _str(payload: dict[str, Any], name: str, limit: int, *, optional: bool = False) -> Any:
    value = payload.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidInputError(f'"{name}" must be a string of 1 to {limit} characters')
    return value


async def receive(
    *, session: AsyncSession, shop: ShopKey, token: bytes, now: dt.datetime
) -> FabricationRequest:
    """Check a signed request from another shop and keep it for the operators."""
    got = signing.verify(token, kind=signing.REQUEST_TYPE, to=shop.shop_id)
    signing.check_times(got, now=now)
    p = got.payload
    try:
        request_id = str(uuid.UUID(_str(p, "id", 36)))
    except ValueError:
        raise InvalidInputError('"id" must be a UUID') from None
    url = remote.check_url(_str(p, "url", 500))
    design = p.get("design")
    if not isinstance(design, dict) or not _HASH.fullmatch(str(design.get("hash", ""))):
        raise InvalidInputError('"design.hash" must be a SHA-256 content hash (64 hex)')
    quantity = p.get("quantity")
    if not isinstance(quantity, int) or isinstance(quantity, bool) or not 1 <= quantity <= 50:
        raise InvalidInputError('"quantity" must be an integer from 1 to 50')
    try:
        due = dt.date.fromisoformat(_str(p, "dueDate", 10)).isoformat()
    except ValueError:
        raise InvalidInputError('"dueDate" must be an ISO 8601 date') from None
    parameters = p.get("parameters")
    if not isinstance(parameters, dict):
        raise InvalidInputError('"parameters" must be an object')
    pinned = await _pin(session, url=url, got=got, now=now)
    if pinned.shop_id != got.shop_id:
        raise NotAuthenticatedError(
            f"another key is pinned for {mask_url(url)}; this request's key is not it"
        )
    replay = ConflictError(f"request {request_id} was received already (a replay)")
    if await session.get(FabricationRequest, request_id) is not None:
        raise replay
    req = FabricationRequest(
        id=request_id,
        direction="incoming",
        state="received",
        peer_shop_id=got.shop_id,
        peer_url=url,
        design_hash=str(design["hash"]),
        design_title=str(design.get("title") or "")[:200],
        parameters=parameters,
        material=_str(p, "material", 64, optional=True),
        quantity=quantity,
        due_date=due,
        requester=_str(p, "requester", 64),
        contact=_str(p, "contact", 200, optional=True),
        last_peer_sequence=got.sequence,
        created_at=now,
        updated_at=now,
        messages=[],
    )
    session.add(req)
    _message(req, direction="received", kind="request", signed=got.jws, payload=p, at=now)
    try:
        await session.flush()
    except IntegrityError:
        # The same request arrived twice at once (a retry racing the first attempt): the
        # other copy's row won. The caller's transaction is rolled back; a 409, never a 500.
        raise replay from None
    log.info("request %s received from shop %s (%s)", request_id, got.shop_id, mask_url(url))
    return req


async def _pin(
    session: AsyncSession, *, url: str, got: signing.Verified, now: dt.datetime
) -> PeerKey:
    """Pin a shop's key for its URL on first use; return the key pinned (ours or earlier).

    One INSERT ... ON CONFLICT DO NOTHING: two first requests from a shop at once both
    read the one pin, and neither fails on the unique URL.
    """
    dialect = session.get_bind().dialect.name
    insert = (pg_insert if dialect == "postgresql" else sqlite_insert)(PeerKey)
    await session.execute(
        insert.values(
            url=url, shop_id=got.shop_id, public_jwk=got.public_jwk, pinned_at=now
        ).on_conflict_do_nothing(index_elements=[PeerKey.url])
    )
    return (
        await session.execute(
            select(PeerKey).where(PeerKey.url == url).execution_options(populate_existing=True)
        )
    ).scalar_one()


# -- at B: answering -----------------------------------------------------------------------


def _check_transition(req: FabricationRequest, status: str) -> None:
    if req.state not in AFTER[status]:
        raise ConflictError(f"request {req.id} is {req.state}: it cannot be {status} now")


async def _move(session: AsyncSession, req: FabricationRequest, status: str) -> None:
    """Move a request to `status` only if it is still in the state this transaction read.

    One conditional UPDATE: of two operators answering at once, or an operator and the
    requesting shop's reply, one wins and the other gets a 409, on SQLite (no row locks)
    as on PostgreSQL.
    """
    result = await session.execute(
        update(FabricationRequest)
        .where(FabricationRequest.id == req.id, FabricationRequest.state == req.state)
        .values(state=status)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise ConflictError(f"request {req.id} was answered meanwhile; reload it")


async def _sign_update(
    *,
    session: AsyncSession,
    settings: Settings,
    shop: ShopKey,
    req: FabricationRequest,
    status: str,
    now: dt.datetime,
    fields: dict[str, Any],
) -> RequestMessage:
    """Sign a status update for the other shop, append it and queue its delivery."""
    _check_transition(req, status)
    issued, expires = signing.times(now, UPDATE_TTL_S)
    payload: dict[str, Any] = {
        "type": signing.UPDATE_TYPE,
        "request": req.id,
        "shop_id": shop.shop_id,
        "key": shop.public_jwk(),
        "url": await _own_url(session, settings),
        "to": req.peer_shop_id,
        "sequence": await report.next_sequence(session=session, now=now),
        "issuedAt": issued,
        "expiresAt": expires,
        "status": status,
        "reason": None,
        "quote": None,
        "proposedDate": None,
        "outcome": None,
        **fields,
    }
    signed = signing.sign(payload, shop)
    await _move(session, req, status)
    _apply(req, payload, now)
    msg = _message(req, direction="sent", kind=status, signed=signed, payload=payload, at=now)
    # Delivered after the commit, and again with backoff while the other shop is away.
    from microfactory.network.requests import outbox  # outbox.py imports this module

    outbox.enqueue(session=session, msg=msg, url=updates_url(req), now=now)
    await session.flush()
    return msg


async def respond(
    *,
    session: AsyncSession,
    settings: Settings,
    shop: ShopKey,
    req: FabricationRequest,
    status: str,
    now: dt.datetime,
    reason: str | None = None,
    quote: dict[str, Any] | None = None,
    proposed_date: str | None = None,
    outcome: str | None = None,
) -> RequestMessage:
    """Sign a status update for the requesting shop and append it (delivered after commit)."""
    if req.direction != "incoming" or status not in FROM_MAKER:
        raise ConflictError("only the shop that makes a request sends its status updates")
    return await _sign_update(
        session=session,
        settings=settings,
        shop=shop,
        req=req,
        status=status,
        now=now,
        fields={
            "reason": reason,
            "quote": quote,
            "proposedDate": proposed_date,
            "outcome": outcome,
        },
    )


async def reply_to_counter(
    *,
    session: AsyncSession,
    settings: Settings,
    shop: ShopKey,
    req: FabricationRequest,
    agree: bool,
    now: dt.datetime,
    reason: str | None = None,
) -> RequestMessage:
    """At A: take (agreed) or turn down (withdrawn) the making shop's counter-offer, signed."""
    if req.direction != "outgoing":
        raise ConflictError("the shop that sent a request answers its counter-offer")
    if req.state != "countered":
        raise ConflictError(f"request {req.id} is {req.state}: there is no counter-offer to answer")
    return await _sign_update(
        session=session,
        settings=settings,
        shop=shop,
        req=req,
        status="agreed" if agree else "withdrawn",
        now=now,
        fields={"reason": reason, "proposedDate": _proposed_date(req)},
    )


def _apply(req: FabricationRequest, payload: dict[str, Any], now: dt.datetime) -> None:
    req.state = str(payload["status"])
    if payload.get("quote") is not None:
        req.quote = payload["quote"]
    if payload.get("outcome") is not None:
        req.outcome = str(payload["outcome"])
    if payload.get("status") == "countered" and payload.get("proposedDate"):
        req.due_date = str(payload["proposedDate"])[:10]
    req.updated_at = now


def _cents(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


async def quote(
    *,
    session: AsyncSession,
    design: Design,
    kind: MachineKind,
    material: str | None,
    body: Accept,
    quantity: int,
) -> dict[str, Any]:
    """Price a request with this shop's own rates (an NC licence allows no price)."""
    table = await costs_service.rates(session=session)
    per_hour = Decimal(table["machine_kinds"].get(kind, 0))
    per_kg = Decimal(table["materials"].get(material or "", 0))
    hours = Decimal(str(body.hours)) * quantity
    grams = Decimal(str(body.material_g)) * quantity
    machine_cents = _cents(hours * per_hour)
    material_cents = _cents(grams * per_kg / 1000)
    total = machine_cents + material_cents
    if total and licence_flags(design.licence)["nc"]:
        raise InvalidInputError(
            f"{design.title!r} is under {design.licence}, a non-commercial licence: it cannot "
            "be priced; accept it at no charge (hours and grams 0)",
            reason="licence_nc",
        )
    return {
        "machineKind": kind.value,
        "quantity": quantity,
        "machineMinutes": int(hours * 60),
        "materialGrams": int(grams),
        "centsPerHour": int(per_hour),
        "centsPerKg": int(per_kg),
        "machineCents": machine_cents,
        "materialCents": material_cents,
        "totalCents": total,
    }


def _source(req: FabricationRequest) -> remote.Source:
    return remote.Source(
        base_url=req.peer_url, content_hash=req.design_hash, shop_id=req.peer_shop_id
    )


async def accept_source(
    *, session: AsyncSession, user: User, request_id: str | uuid.UUID, status: str = "accepted"
) -> remote.Source | None:
    """Check a request may be accepted (or countered); return where to fetch its design.

    None: the design is held here already.

    Only reads: the caller ends the transaction before fetching, so a fetch that takes a
    while holds no lock and no connection.
    """
    req = await get_visible(session=session, request_id=request_id, user=user)
    if req.direction != "incoming":
        raise ConflictError("this shop sent that request; the other shop answers it")
    _check_transition(req, status)
    source = _source(req)
    held = await remote.held_design(session=session, user=user, source=source)
    return None if held is not None else source


async def accept(
    *,
    session: AsyncSession,
    settings: Settings,
    shop: ShopKey,
    user: User,
    request_id: str | uuid.UUID,
    body: Accept,
    now: dt.datetime,
    fetched: remote.Fetched | None = None,
) -> tuple[FabricationRequest, Job, RequestMessage]:
    """Accept a request: keep its design (fetched by hash), make a job, sign the quote.

    Everything here is one transaction, the caller's: the design kept, the job, the state
    and the signed acceptance (queued in the outbox) are committed together or not at all,
    so a failure anywhere leaves the request as it was, to accept again. The caller
    discards the fetched files if it does not commit.
    """
    req = await get_visible(session=session, request_id=request_id, user=user, lock=True)
    if req.direction != "incoming":
        raise ConflictError("this shop sent that request; the other shop answers it")
    _check_transition(req, "accepted")  # answered meanwhile by another operator
    if fetched is not None:
        design, _created = await remote.keep_design(
            session=session, settings=settings, user=user, fetched=fetched
        )
    else:
        held = await remote.held_design(session=session, user=user, source=_source(req))
        if held is None:
            raise ConflictError("the request's design is no longer held here; accept again")
        design = held
    if body.file_id is not None:
        design_file = design_service.get_file_or_raise(design, body.file_id)
    else:
        printable = [f for f in design.files if f.kind in ("scad", "stl", "3mf", "gcode")]
        if len(printable) != 1:
            names = ", ".join(f"{f.id}: {f.name}" for f in printable) or "none"
            raise InvalidInputError(f"choose the design file to make (file_id): {names}")
        design_file = printable[0]
    kind = body.machine_kind or MachineKind.FDM_PRINTER
    priced = await quote(
        session=session,
        design=design,
        kind=kind,
        material=req.material,
        body=body,
        quantity=req.quantity,
    )
    customer = await network_customer(session=session, req=req)
    job = await preparation.create_from_design(
        session=session,
        owner=customer,
        design=design,
        design_file=design_file,
        parameters=req.parameters or None,
        material=req.material,
        copies=req.quantity,
        machine_kind=body.machine_kind or (kind if design_file.kind == "gcode" else None),
        machine_id=body.machine_id,
        settings=settings,
        price=priced["totalCents"] / 100 if priced["totalCents"] else None,
    )
    job.title = f"{design.title} ×{req.quantity} (request {req.id[:8]})"[:200]
    job.notes = f"fabrication request {req.id} from shop {req.peer_shop_id} ({req.peer_url})"
    req.job_id = job.id
    req.design_id = design.id
    msg = await respond(
        session=session,
        settings=settings,
        shop=shop,
        req=req,
        status="accepted",
        now=now,
        reason=body.note,
        quote=priced,
    )
    return req, job, msg


NETWORK_CUSTOMER_PREFIX = "network-"
# Not an argon2 hash: no password ever matches it (verify_password answers False).
_NO_PASSWORD_HASH = "!network-customer"  # noqa: S105 - a marker, not a secret


async def network_customer(*, session: AsyncSession, req: FabricationRequest) -> User:
    """Return the account that stands for the requesting shop here, made on first use.

    Jobs made from its requests are its own, so the usage log, the queue's fair share and
    statements show the work as that shop's (a "network" customer), not the operator's
    who accepted it. It cannot log in; it is trusted (an operator accepted the request).
    """
    username = f"{NETWORK_CUSTOMER_PREFIX}{req.peer_shop_id[:24]}"
    found = (
        await session.execute(select(User).where(User.username == username))
    ).scalar_one_or_none()
    if found is not None:
        return found
    host = urlsplit(req.peer_url).netloc or req.peer_url
    user = User(
        username=username,
        full_name=f"Network shop {host}"[:200],
        role=Role.MEMBER,
        trusted=True,
        password_hash=_NO_PASSWORD_HASH,
    )
    session.add(user)
    await session.flush()
    return user


async def network_statement(
    *, session: AsyncSession, start: dt.datetime, end: dt.datetime
) -> list[dict[str, Any]]:
    """Return the work accepted for other shops in [start, end): one line per request.

    Priced with the quote signed in the acceptance (this shop's rates at the time), which
    is what the other shop agreed to; measured usage is in the network customer's usage.
    """
    rows = (
        await session.execute(
            select(FabricationRequest, Job)
            .join(Job, Job.id == FabricationRequest.job_id)
            .where(
                FabricationRequest.direction == "incoming",
                FabricationRequest.job_id.is_not(None),
            )
            .order_by(FabricationRequest.created_at)
        )
    ).all()
    lines = []
    for req, job in rows:
        accepted = next((m for m in req.messages if m.kind == "accepted"), None)
        if accepted is None or not start <= accepted.at < end:
            continue
        quote = dict(req.quote or {})
        lines.append(
            {
                "request_id": req.id,
                "accepted_at": accepted.at,
                "customer": f"{NETWORK_CUSTOMER_PREFIX}{req.peer_shop_id[:24]}",
                "shop_id": req.peer_shop_id,
                "shop_url": req.peer_url,
                "design_title": req.design_title,
                "quantity": req.quantity,
                "job_id": job.id,
                "job_state": str(job.state),
                "state": req.state,
                "machine_minutes": int(quote.get("machineMinutes") or 0),
                "material_grams": int(quote.get("materialGrams") or 0),
                "total_cents": int(quote.get("totalCents") or 0),
            }
        )
    return lines


async def counter(
    *,
    session: AsyncSession,
    settings: Settings,
    shop: ShopKey,
    user: User,
    req: FabricationRequest,
    proposed_date: str,
    reason: str,
    terms: Accept | None,
    now: dt.datetime,
    fetched: remote.Fetched | None = None,
) -> RequestMessage:
    """Propose another date (and a quote from the terms); A's agreement makes the job.

    The design is kept (fetched by hash) to price it, as accepting would: its licence
    decides whether it may carry a price. The terms (hours, grams, file, machine) are kept
    with the request, so A agreeing accepts it with them, the countering operator owning
    the job, without anyone at B.
    """
    design: Design | None
    if fetched is not None:
        design, _created = await remote.keep_design(
            session=session, settings=settings, user=user, fetched=fetched
        )
    else:
        design = await remote.held_design(session=session, user=user, source=_source(req))
    quoted = None
    if terms is not None and design is not None:
        quoted = await quote(
            session=session,
            design=design,
            kind=terms.machine_kind or MachineKind.FDM_PRINTER,
            material=req.material,
            body=terms,
            quantity=req.quantity,
        )
        req.design_id = design.id
    req.terms = {
        "accept": (terms or Accept()).model_dump(mode="json"),
        "operator_id": user.id,
    }
    return await respond(
        session=session,
        settings=settings,
        shop=shop,
        req=req,
        status="countered",
        now=now,
        reason=reason,
        quote=quoted,
        proposed_date=proposed_date,
    )


# -- at A: receiving updates ---------------------------------------------------------------


async def receive_update(
    *,
    session: AsyncSession,
    shop: ShopKey,
    request_id: str | uuid.UUID,
    token: bytes,
    now: dt.datetime,
) -> FabricationRequest:
    """Check a signed status update from the shop a request was sent to, and apply it."""
    request_id = str(request_id)
    got = signing.verify(token, kind=signing.UPDATE_TYPE, to=shop.shop_id)
    signing.check_times(got, now=now)
    p = got.payload
    if p.get("request") != request_id:
        raise InvalidInputError("the update names another request than the URL")
    req = await _get(session, request_id, lock=True)
    if req is None:
        raise NotFoundError(f"request {request_id} not found")
    if got.shop_id != req.peer_shop_id:
        raise NotAuthenticatedError("the update is not signed by the other shop of the request")
    if got.sequence <= req.last_peer_sequence:
        raise ConflictError(
            f"update sequence {got.sequence} is not after {req.last_peer_sequence} (a replay)"
        )
    status = p.get("status")
    if status not in signing.STATUSES:
        raise InvalidInputError(f'"status" must be one of {", ".join(signing.STATUSES)}')
    # The maker (B) reports to the requester (A); A only answers a counter-offer.
    allowed = FROM_MAKER if req.direction == "outgoing" else FROM_REQUESTER
    if status not in allowed:
        raise ConflictError(f"the other shop of this request does not send {status!r}")
    _check_transition(req, str(status))
    await _move(session, req, str(status))
    if p.get("outcome") not in (None, "good", "bad"):
        raise InvalidInputError('"outcome" must be good, bad or null')
    quoted = p.get("quote")
    if quoted is not None and not isinstance(quoted, dict):
        raise InvalidInputError('"quote" must be an object or null')
    for name in ("totalCents", "machineCents", "materialCents"):
        cents = (quoted or {}).get(name)
        if cents is not None and (not isinstance(cents, int) or isinstance(cents, bool)):
            raise InvalidInputError(f'"quote.{name}" must be an integer number of cents')
    _apply(req, p, now)
    req.last_peer_sequence = got.sequence
    _message(req, direction="received", kind=str(status), signed=got.jws, payload=p, at=now)
    await session.flush()
    log.info("request %s: %s from shop %s", request_id, status, got.shop_id)
    return req
