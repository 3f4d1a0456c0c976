"""Mirror pages in a pipeline: check page k+1 in a worker process while page k is stored.

A page's cost splits in two about evenly: the checks that need no database (parse, canonical
form, Ed25519 signature, the fields the index takes: `service.check`) and the store (pins,
sequences, inserts, the index rows: `service.store_checked`), which mostly waits on the
database. Run one after the other, a hub mirroring on PostgreSQL used one core at a time;
with the checks of the next page in a worker process (`hub_check_workers`, spawned on first
use, ended with the server), both cores work. The outcomes are the same, report by report, as
`service.ingest_many` on each page in turn: the checks of a page never read the database, and
pages are still stored one after the other, in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import multiprocessing
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory import errors
from microfactory.config import Settings
from microfactory.errors import ConflictError, DomainError
from microfactory.network.hub import index, service, verify
from microfactory.workers import die_with_parent

Outcome = service.IngestResult | DomainError
# What a worker sends back per token: the checked report and its derived index fields, or
# the refusal as (class name, detail, extra): an exception's own pickling drops `extra`.
_Wire = tuple[verify.VerifiedReport, index.Derived] | tuple[str, str, dict[str, Any]]

_pool: ProcessPoolExecutor | None = None
_pool_workers = 0
_pool_lock = threading.Lock()


def _check_tokens(
    tokens: Sequence[str | bytes], settings: Settings, now: dt.datetime
) -> list[_Wire]:
    """In the worker: `service.check` on each token."""
    out: list[_Wire] = []
    for token in tokens:
        try:
            c = service.check(token, settings=settings, now=now)
        except DomainError as exc:
            out.append((type(exc).__name__, exc.detail, exc.extra))
        else:
            # Only what the store reads crosses back: the index rows, built here, and the
            # report without its token (the server has it: `_unwire`) or its parsed payload
            # but for the two fields a new pin takes. A third of the bytes to unpickle.
            okw = c.report.payload["okw"]
            report = dataclasses.replace(
                c.report, jws="", payload={"okw": {"name": okw.get("name"), "url": okw.get("url")}}
            )
            out.append((report, c.derived.built(report)))
    return out


def _unwire(
    wire: list[_Wire],
    tokens: Sequence[str | bytes],
    settings: Settings,
    now: dt.datetime,
    source: str,
) -> list[service.Checked | DomainError]:
    out: list[service.Checked | DomainError] = []
    for item, token in zip(wire, tokens, strict=True):
        if isinstance(item[0], str):
            name, detail, extra = item
            cls = getattr(errors, name, None)
            if not (isinstance(cls, type) and issubclass(cls, DomainError)):
                cls = DomainError
            out.append(cls(detail, **extra))
        else:
            report, derived = item
            if not report.jws:  # back from a worker: the very token it was checked from
                text = token.decode() if isinstance(token, bytes) else token
                object.__setattr__(report, "jws", text.strip())  # as `verify.verify` keeps it
            out.append(service.Checked(report, derived, now, settings, source))
    return out


def _get_pool(workers: int) -> ProcessPoolExecutor:
    global _pool, _pool_workers
    with _pool_lock:
        if _pool is None or _pool_workers != workers:
            if _pool is not None:
                _pool.shutdown(wait=False, cancel_futures=True)
            # spawn, not fork: forking a process that runs an event loop and threads is unsafe.
            _pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=die_with_parent,
                initargs=(os.getpid(),),
            )
            _pool_workers = workers
        return _pool


def shutdown_check_pool() -> None:
    """Stop the worker processes (call on application shutdown)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


async def check_page(
    tokens: Sequence[str | bytes], *, settings: Settings, now: dt.datetime, source: str
) -> list[service.Checked | DomainError]:
    """`service.check` on every token, in the worker pool when the settings give one."""
    tokens = list(tokens)
    if settings.hub_check_workers <= 0 or not tokens:
        return _unwire(_check_tokens(tokens, settings, now), tokens, settings, now, source)
    # One share of the page per worker, checked side by side.
    workers = settings.hub_check_workers
    size = -(-len(tokens) // workers)
    shares = [tokens[k : k + size] for k in range(0, len(tokens), size)]
    loop = asyncio.get_running_loop()
    try:
        pool = _get_pool(workers)
        parts = await asyncio.gather(
            *(loop.run_in_executor(pool, _check_tokens, share, settings, now) for share in shares)
        )
    except BrokenProcessPool:
        shutdown_check_pool()  # a worker was killed: a new pool next time, this page here
        parts = [await asyncio.to_thread(_check_tokens, tokens, settings, now)]
    wire = [item for part in parts for item in part]
    return _unwire(wire, tokens, settings, now, source)


async def store_page(
    sessionmaker: async_sessionmaker[AsyncSession],
    checks: Sequence[service.Checked | DomainError],
) -> list[Outcome]:
    """Store a checked page in one transaction; after a race, one transaction per report."""
    try:
        async with sessionmaker() as session, session.begin():
            return await _store(session, checks)
    except DomainError:
        pass  # a push of the same shop raced the page: take its reports one by one
    outcomes: list[Outcome] = []
    for check in checks:
        try:
            async with sessionmaker() as session, session.begin():
                outcomes.extend(await _store(session, [check]))
        except DomainError as exc:
            outcomes.append(exc)
    return outcomes


async def _store(
    session: AsyncSession, checks: Sequence[service.Checked | DomainError]
) -> list[Outcome]:
    results: list[Outcome | None] = [c if isinstance(c, DomainError) else None for c in checks]
    good = [(i, c) for i, c in enumerate(checks) if not isinstance(c, DomainError)]
    stored = await service.store_checked(session=session, items=[c for _, c in good])
    for (i, _), outcome in zip(good, stored, strict=True):
        results[i] = outcome
    return [r if r is not None else ConflictError("not decided") for r in results]


class PageIngest:
    """Feed pages in order; each `feed` starts the page's checks and stores the page before.

    `feed` returns the outcomes of the page fed before this one (None for the first), and
    `finish` those of the last, so the caller matches outcomes to its pages in order.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        source: str,
        now: dt.datetime | None = None,
    ) -> None:
        self._sessionmaker, self._settings = sessionmaker, settings
        self._source, self._now = source, now
        self._checking: asyncio.Task[list[service.Checked | DomainError]] | None = None

    async def feed(self, tokens: Sequence[str | bytes]) -> list[Outcome] | None:
        now = self._now or dt.datetime.now(dt.UTC)
        task = asyncio.ensure_future(
            check_page(tokens, settings=self._settings, now=now, source=self._source)
        )
        previous, self._checking = self._checking, task
        if previous is None:
            return None
        try:
            return await store_page(self._sessionmaker, await previous)
        except BaseException:
            await self.close()
            raise

    async def finish(self) -> list[Outcome] | None:
        previous, self._checking = self._checking, None
        if previous is None:
            return None
        return await store_page(self._sessionmaker, await previous)

    async def close(self) -> None:
        """Drop a page still being checked (after an error): nothing of it is stored."""
        task, self._checking = self._checking, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
