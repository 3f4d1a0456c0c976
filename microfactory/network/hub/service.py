"""Hub rules: take a signed report, pin shops' keys, approve and revoke, list what is stored.

The order of the checks for `ingest` (each answer is in docs/network-hub.md):
form (400) → `kid` is the thumbprint of the report's `key`, signature (401) → the pin:
revoked (403), unknown on a closed hub (stored as pending, 202) → times (422) → sequence
greater than the last taken (409) → stored exactly as received, and indexed.
Services only flush; the caller owns the transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.config import Settings
from microfactory.errors import (
    ConflictError,
    DomainError,
    NotAuthenticatedError,
    NotFoundError,
    PermissionDeniedError,
)
from microfactory.network.hub import index, verify
from microfactory.network.hub.models import HubReport, HubShop, HubShopIndex, PinStatus

log = logging.getLogger(__name__)

PAGE_SIZE = 500  # reports served per GET /reports page


@dataclass(frozen=True)
class IngestResult:
    """What happened to a report: accepted (stored), pending (waits for an admin), duplicate."""

    shop_id: str
    sequence: int
    status: str
    cursor: int | None = None


def _pin_key(shop: HubShop, report: verify.VerifiedReport) -> None:
    if shop.public_jwk.get("x") != report.public_jwk["x"]:
        # The shop id is the key's thumbprint, so this means a corrupted pin; refuse loudly.
        raise NotAuthenticatedError("the report's key does not match the key pinned for this shop")


async def ingest(
    *,
    session: AsyncSession,
    token: str | bytes,
    settings: Settings,
    now: dt.datetime,
    source: str = "push",
) -> IngestResult:
    """Verify a compact JWS report and store it as received (see the module's order)."""
    (result,) = await ingest_many(
        session=session, tokens=[token], settings=settings, now=now, source=source
    )
    if isinstance(result, DomainError):
        raise result
    return result


@dataclass(frozen=True)
class Checked:
    """A report that passed the checks needing no database, with what it is to be taken as."""

    report: verify.VerifiedReport
    derived: index.Derived
    now: dt.datetime
    settings: Settings
    source: str = "push"


def check(
    token: str | bytes, *, settings: Settings, now: dt.datetime, source: str = "push"
) -> Checked:
    """Verify a report and check its fields for the index (400 / 401), without the database."""
    report = verify.verify(token)
    # A report the index cannot take is refused (400) before it is stored.
    return Checked(report, index.derive(report), now, settings, source)


async def ingest_many(
    *,
    session: AsyncSession,
    tokens: Sequence[str | bytes],
    settings: Settings,
    now: dt.datetime,
    source: str = "push",
) -> list[IngestResult | DomainError]:
    """Verify reports and store those that pass, in the caller's one transaction.

    Each report gets its own answer (a result, or the DomainError that refused it), in
    order; reports of one shop are checked against each other in order too. The database
    work is a handful of statements for the whole list (a mirror's page of 500 reports costs
    what ~6 single pushes do); a single push is a list of one. A race the pin rows' lock
    cannot cover (two first reports of a new shop at once) fails the whole transaction with
    a ConflictError, reason "race"; the caller may retry.
    """
    results: list[IngestResult | DomainError | None] = [None] * len(tokens)
    checked: list[tuple[int, Checked]] = []
    for i, token in enumerate(tokens):
        try:
            checked.append((i, check(token, settings=settings, now=now, source=source)))
        except DomainError as exc:
            results[i] = exc
    stored = await store_checked(session=session, items=[c for _, c in checked])
    for (i, _), outcome in zip(checked, stored, strict=True):
        results[i] = outcome
    return [r if r is not None else ConflictError("not decided") for r in results]


async def store_checked(
    *, session: AsyncSession, items: Sequence[Checked]
) -> list[IngestResult | DomainError]:
    """Take checked reports in the caller's transaction: pin, times, sequence, store, index.

    Each gets its own answer, in order (see `ingest_many`, which this is after `check`); the
    hub's group commit (`batch.IngestBatcher`) calls it with concurrent pushes.
    """
    results: list[IngestResult | DomainError | None] = [None] * len(items)
    shops = await _shops_for_update(session, {c.report.shop_id for c in items})
    stored: list[tuple[int, Checked]] = []
    for i, item in enumerate(items):
        try:
            outcome = _decide(session, shops, item)
        except DomainError as exc:
            results[i] = exc
            continue
        if outcome is None:
            stored.append((i, item))
        else:
            results[i] = outcome
    if stored:
        cursors = await _store(session, [item for _, item in stored])
        for (i, item), cursor in zip(stored, cursors, strict=True):
            report = item.report
            results[i] = IngestResult(report.shop_id, report.sequence, "accepted", cursor)
    else:
        await session.flush()
    return [r if r is not None else ConflictError("not decided") for r in results]


async def _shops_for_update(session: AsyncSession, shop_ids: set[str]) -> dict[str, HubShop]:
    if not shop_ids:
        return {}
    # FOR UPDATE on PostgreSQL: two pushes of the same shop are serialised on its pin row, so
    # the sequence check and the store happen as one; in shop-id order, so that two batches
    # of several shops take their locks in one order and never wait for each other in a
    # circle. SQLite serialises writers anyway.
    stmt = (
        select(HubShop)
        .where(HubShop.shop_id.in_(sorted(shop_ids)))
        .order_by(HubShop.shop_id)
        .with_for_update()
    )
    return {s.shop_id: s for s in (await session.execute(stmt)).scalars()}


def _decide(session: AsyncSession, shops: dict[str, HubShop], item: Checked) -> IngestResult | None:
    """Check one report against its shop's pin; return its answer, or None to store it."""
    report, settings, now = item.report, item.settings, item.now
    shop = shops.get(report.shop_id)
    if shop is not None:
        _pin_key(shop, report)
        if shop.status is PinStatus.REVOKED:
            raise PermissionDeniedError("this hub's admins revoked this shop's key")
    verify.check_times(report, now=now, clock_skew_s=settings.hub_clock_skew_s)
    name = index._str(report.payload["okw"].get("name"))
    url = index._str(report.payload["okw"].get("url"), 500)
    if shop is None:
        shop = HubShop(
            shop_id=report.shop_id,
            public_jwk=report.public_jwk,
            status=PinStatus.APPROVED if settings.hub_open else PinStatus.PENDING,
            name=name,
            url=url,
            first_seen_at=now,
            decided_at=now if settings.hub_open else None,
            decided_by="first use" if settings.hub_open else None,
        )
        session.add(shop)
        shops[report.shop_id] = shop
        log.info("hub: new shop %s (%s), %s", report.shop_id, name, shop.status.value)
    if shop.status is PinStatus.PENDING:
        pending_seq = _pending_sequence(shop)
        if pending_seq is not None and report.sequence <= pending_seq:
            raise ConflictError(
                f"sequence {report.sequence} is not greater than {pending_seq}, the last one "
                "received from this shop",
                reason="replay",
            )
        shop.pending_jws, shop.pending_source = report.jws, item.source
        shop.name, shop.url = name, url
        return IngestResult(report.shop_id, report.sequence, "pending")
    if shop.last_sequence is not None and report.sequence <= shop.last_sequence:
        raise ConflictError(
            f"sequence {report.sequence} is not greater than {shop.last_sequence}, the last one "
            "taken from this shop: a replay",
            reason="replay",
        )
    shop.last_sequence = report.sequence
    if shop.name != name:
        shop.name = name
    if shop.url != url:
        shop.url = url
    return None


def _pending_sequence(shop: HubShop) -> int | None:
    if not shop.pending_jws:
        return None
    try:
        _, payload, _ = verify.parse(shop.pending_jws)
    except DomainError:
        return None
    seq = payload.get("live", {}).get("sequence")
    return seq if isinstance(seq, int) else None


_REPORTS = cast(Table, HubReport.__table__)
# The reports as received, one executemany on the table (not the ORM's bulk path), with the
# cursors the database gave them in the rows' order.
_INSERT_REPORTS = insert(_REPORTS).returning(_REPORTS.c.cursor, sort_by_parameter_order=True)


async def _store(session: AsyncSession, stored: list[Checked]) -> list[int]:
    """Insert the reports as received and re-index each shop from its newest; return cursors."""
    rows = [
        {
            "shop_id": item.report.shop_id,
            "sequence": item.report.sequence,
            "jws": item.report.jws,
            "issued_at": item.report.issued_at,
            "expires_at": item.report.expires_at,
            "received_at": item.now,
            "source": item.source[:500],
        }
        for item in stored
    ]
    try:
        await session.flush()  # new pins first: the reports name them
        result = await session.execute(_INSERT_REPORTS, rows)
        cursors = [c for (c,) in result.all()]
        newest: dict[str, tuple[verify.VerifiedReport, index.Derived, int]] = {}
        for item, cursor in zip(stored, cursors, strict=True):
            newest[item.report.shop_id] = (item.report, item.derived, cursor)
        await index.index_many(session=session, reports=list(newest.values()))
        await session.flush()
    except IntegrityError:
        # The caller's transaction is rolled back with this 409.
        raise ConflictError(
            "another report of this shop was stored at the same moment; retry",
            reason="race",
        ) from None
    return cursors


# -- approval ------------------------------------------------------------------------


async def get_shop_or_raise(*, session: AsyncSession, shop_id: str) -> HubShop:
    """Return a shop the hub has seen, or raise NotFoundError."""
    shop = await session.get(HubShop, shop_id)
    if shop is None:
        raise NotFoundError(f"this hub has never seen shop {shop_id}")
    return shop


async def list_pins(*, session: AsyncSession, status: PinStatus | None = None) -> list[HubShop]:
    """Return the shops the hub has seen, pending first, then by name."""
    stmt = select(HubShop)
    if status is not None:
        stmt = stmt.where(HubShop.status == status)
    shops = list((await session.execute(stmt)).scalars())
    order = {PinStatus.PENDING: 0, PinStatus.APPROVED: 1, PinStatus.REVOKED: 2}
    shops.sort(key=lambda s: (order[s.status], s.name.lower(), s.shop_id))
    return shops


async def approve(
    *, session: AsyncSession, shop_id: str, admin: str, settings: Settings, now: dt.datetime
) -> HubShop:
    """Pin a shop's key; its newest pending report is taken if it is still valid."""
    shop = await get_shop_or_raise(session=session, shop_id=shop_id)
    shop.status = PinStatus.APPROVED
    shop.decided_at, shop.decided_by = now, admin
    pending, source = shop.pending_jws, shop.pending_source or "push"
    shop.pending_jws = shop.pending_source = None
    await session.flush()
    if pending:
        try:
            await ingest(session=session, token=pending, settings=settings, now=now, source=source)
        except DomainError as exc:  # expired while it waited: the shop's next push counts
            log.info("hub: pending report of %s not taken on approval: %s", shop_id, exc.detail)
    log.info("hub: shop %s approved by %s", shop_id, admin)
    return shop


async def revoke(*, session: AsyncSession, shop_id: str, admin: str, now: dt.datetime) -> HubShop:
    """Refuse a shop's reports from now on and drop it from the shop list and routing."""
    shop = await get_shop_or_raise(session=session, shop_id=shop_id)
    shop.status = PinStatus.REVOKED
    shop.decided_at, shop.decided_by = now, admin
    shop.pending_jws = shop.pending_source = None
    await index.drop_shop(session=session, shop_id=shop_id)
    await session.flush()
    log.info("hub: shop %s revoked by %s", shop_id, admin)
    return shop


# -- the read side -------------------------------------------------------------------


async def reports_since(
    *, session: AsyncSession, since: int | None, limit: int = PAGE_SIZE
) -> tuple[list[HubReport], int]:
    """Return stored reports of approved shops with cursor >= since, and the next cursor."""
    stmt = (
        select(HubReport)
        .join(HubShop, HubShop.shop_id == HubReport.shop_id)
        .where(HubShop.status == PinStatus.APPROVED)
        .order_by(HubReport.cursor)
        .limit(limit)
    )
    if since is not None:
        stmt = stmt.where(HubReport.cursor >= since)
    rows = list((await session.execute(stmt)).scalars())
    if rows:
        return rows, rows[-1].cursor + 1
    if since is not None:
        return rows, since
    top = (await session.execute(select(func.max(HubReport.cursor)))).scalar_one_or_none()
    return rows, (top or 0) + 1


async def list_shops(
    *, session: AsyncSession, now: dt.datetime, live_only: bool = False
) -> list[HubShopIndex]:
    """Return indexed shops: live ones by name, then expired ones (unless live_only)."""
    stmt = select(HubShopIndex)
    if live_only:
        stmt = stmt.where(HubShopIndex.expires_at > now)
    rows = list((await session.execute(stmt)).scalars())
    rows.sort(key=lambda r: (r.expires_at <= now, r.name.lower(), r.shop_id))
    return rows


def shop_view(row: HubShopIndex, now: dt.datetime) -> dict[str, Any]:
    """Return a shop as the contract's GET /shops lists it."""
    return {
        "shop_id": row.shop_id,
        "name": row.name,
        "url": row.url,
        "city": row.city,
        "country": row.country,
        "lat": row.lat,
        "lon": row.lon,
        "processes": row.processes,
        "materials": row.materials,
        "sequence": row.sequence,
        "issued_at": row.issued_at,
        "expires_at": row.expires_at,
        "expired": row.expires_at <= now,
        "queue": row.summary.get("queue", []),
        "equipment": row.summary.get("equipment", []),
    }
