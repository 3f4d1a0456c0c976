"""Group commit for pushed reports: concurrent pushes share one transaction.

A push costs a handful of statements and a commit whatever its size, and on a busy hub most
of its time is those round trips. With `MICROFACTORY_HUB_INGEST_BATCH=true` (the default) a
push is verified in its own request (400 and 401 at once, no database), then queued; a
task of the process takes the queue and stores up to `MICROFACTORY_HUB_INGEST_BATCH_MAX`
reports in one transaction through `service.store_checked`, the very checks a single push passes:
the shops' pins are locked FOR UPDATE in shop-id order, then pin, times and sequence are
checked report by report, in arrival order (a replay inside the batch is refused 409 as
any replay), and the reports are stored byte for byte and indexed. Each request gets its
own answer: 202 accepted or pending, or its own 403, 409 or 422.

Nothing waits for a batch to fill: the first push of a quiet hub is committed at once,
alone; the pushes that arrive while that commit runs form the next batch. On PostgreSQL
up to `IN_FLIGHT` batches commit at once, so that their round trips overlap (SQLite, one
writer at a time: one). If a batch's transaction fails as a whole (two first reports of a
new shop raced another process, a deadlock, a lost connection), it is rolled back and each
of its reports is taken again in a transaction of its own, so one report never costs the
others theirs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory.network.hub import service

log = logging.getLogger(__name__)

_Outcome = service.IngestResult | BaseException
IN_FLIGHT = 4  # batches committing at once on PostgreSQL


class IngestBatcher:
    """One process's queue of checked pushes and the task that commits them in batches."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        self._queue: list[tuple[service.Checked, asyncio.Future[_Outcome]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        bind = sessionmaker.kw.get("bind")
        sqlite = bind is not None and bind.dialect.name == "sqlite"
        # SQLite has one writer at a time; PostgreSQL overlaps a few batches' round trips
        # (their pins locked in one order, their version bumps one after the other).
        self.in_flight = 1 if sqlite else IN_FLIGHT
        self.batches = 0  # transactions committed with more than one report (tests, bench)
        self.fallbacks = 0  # batches taken again report by report

    async def submit(self, item: service.Checked) -> service.IngestResult:
        """Queue a checked report; return its result or raise what refused it."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # an app served again by another event loop: start afresh
            self._loop, self._queue, self._tasks = loop, [], set()
        future: asyncio.Future[_Outcome] = loop.create_future()
        self._queue.append((item, future))
        if len(self._tasks) < self.in_flight:
            task = asyncio.create_task(self._run(), name="hub ingest batch")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # Shielded: a client that goes away does not cancel its report's part in a batch.
        outcome = await asyncio.shield(future)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _run(self) -> None:
        batch: list[tuple[service.Checked, asyncio.Future[_Outcome]]] = []
        try:
            while self._queue:
                most = self._queue[0][0].settings.hub_ingest_batch_max
                batch = self._queue[:most]
                del self._queue[:most]
                outcomes = await self._take([item for item, _ in batch])
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if not future.done():
                        future.set_result(outcome)
                batch = []
        except BaseException as exc:  # cancelled (shutdown): no request is left waiting
            for _, future in batch + self._queue:
                if not future.done():
                    future.set_exception(
                        exc if isinstance(exc, Exception) else RuntimeError("hub shutting down")
                    )
            self._queue.clear()
            raise

    async def _take(self, items: list[service.Checked]) -> list[_Outcome]:
        """Store a batch in one transaction; if it fails, each report in its own."""
        try:
            async with self._sessionmaker() as session, session.begin():
                outcomes: list[Any] = await service.store_checked(session=session, items=items)
            if len(items) > 1:
                self.batches += 1
            return outcomes
        except Exception as exc:
            if len(items) == 1:
                return [exc]
            self.fallbacks += 1
            log.info("hub: a batch of %d reports failed (%s); taking them one by one",
                     len(items), exc)  # fmt: skip
        singles: list[_Outcome] = []
        for item in items:
            try:
                async with self._sessionmaker() as session, session.begin():
                    (outcome,) = await service.store_checked(session=session, items=[item])
                singles.append(outcome)
            except Exception as exc:
                singles.append(exc)
        return singles


def batcher(app: Any) -> IngestBatcher:
    """Return the app's batcher (one per app, made on the first push)."""
    found: IngestBatcher | None = getattr(app.state, "hub_ingest_batcher", None)
    if found is None:
        found = app.state.hub_ingest_batcher = IngestBatcher(app.state.sessionmaker)
    return found
