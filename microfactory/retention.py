"""Uploaded files do not pile up: old jobs' files are deleted, and each member has a quota.

- Retention: the G-code of a job that ended (finished, failed, cancelled) more than
  `job_file_retention_days` ago is deleted by a scheduled task. The job's record stays (the
  usage log and the history need it); its `flags["file_deleted_at"]` says when its file went.
  A file shared by a requeued job is kept while any job using it is still recent or live.
- Quota: the bytes of a member's jobs whose files are still on disk, plus the files of the
  designs they added, may not exceed `member_storage_quota_bytes`; an upload past it is
  refused (413) with what to do.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from pathlib import Path

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.accounts.models import User
from microfactory.config import Settings
from microfactory.designs.models import Design, DesignFile
from microfactory.errors import PayloadTooLargeError
from microfactory.jobs.media import printer_thumbnail_path
from microfactory.jobs.models import Job, JobState

log = logging.getLogger("microfactory.retention")

ENDED = (JobState.FINISHED, JobState.FAILED, JobState.CANCELLED, JobState.CLEARED)
DELETED_FLAG = "file_deleted_at"


async def member_usage_bytes(*, session: AsyncSession, user: User) -> int:
    """Return the bytes a member's files take: their jobs' files on disk and their designs'."""
    jobs = await session.execute(
        select(Job.stored_name, Job.file_size, Job.flags).where(Job.owner_id == user.id)
    )
    seen: dict[str, int] = {}
    for stored_name, size, flags in jobs:
        if not (flags or {}).get(DELETED_FLAG):
            seen[stored_name] = max(seen.get(stored_name, 0), int(size or 0))
    designs = await session.scalar(
        select(func.coalesce(func.sum(DesignFile.size_bytes), 0))
        .join(Design, Design.id == DesignFile.design_id)
        .where(Design.created_by_id == user.id)
    )
    return sum(seen.values()) + int(designs or 0)


async def check_quota(
    *, session: AsyncSession, settings: Settings, user: User, incoming_bytes: int
) -> None:
    """Refuse (413) an upload that would take a member past their storage quota."""
    quota = settings.member_storage_quota_bytes
    if quota is None:
        return
    used = await member_usage_bytes(session=session, user=user)
    if used + incoming_bytes > quota:
        raise PayloadTooLargeError(
            f"this upload ({_mib(incoming_bytes)}) would take your files to "
            f"{_mib(used + incoming_bytes)}, over your storage quota of {_mib(quota)}; "
            "cancel or clear old jobs, or ask an operator for more room",
            used_bytes=used,
            quota_bytes=quota,
        )


async def check_quota_or_discard(
    *, session: AsyncSession, settings: Settings, user: User, stored: list[tuple[Path, int]]
) -> None:
    """Check the quota for files just stored (path, size); delete them if it is exceeded."""
    try:
        await check_quota(
            session=session,
            settings=settings,
            user=user,
            incoming_bytes=sum(size for _, size in stored),
        )
    except PayloadTooLargeError:
        for path, _ in stored:
            await asyncio.to_thread(_unlink, path)
        raise


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


# The purge scans every ended job's row (a few columns), so it runs at most hourly per
# upload directory in this process, however often the scheduler ticks.
PURGE_INTERVAL_S = 3600.0
_last_purge: dict[str, float] = {}


async def purge_job_files(
    *, session: AsyncSession, settings: Settings, now: dt.datetime
) -> list[int]:
    """Delete the files of jobs that ended before the retention window; return their ids.

    Runs as a scheduled task in its own transaction. The file is removed before the job
    is marked, so a failed commit only means the next run marks it again (deleting a file
    that is already gone is a no-op), never a record that points at a deleted file as if
    it were there.
    """
    days = settings.job_file_retention_days
    if days is None:
        return []
    key = str(settings.upload_dir.resolve())
    clock = time.monotonic()
    if clock - _last_purge.get(key, -PURGE_INTERVAL_S) < PURGE_INTERVAL_S:
        return []
    _last_purge[key] = clock
    cutoff = now - dt.timedelta(days=days)
    ended_at = func.coalesce(Job.ended_at, Job.cleared_at, Job.updated_at)
    rows = await session.execute(
        select(Job.id, Job.stored_name, Job.flags).where(Job.state.in_(ENDED), ended_at < cutoff)
    )
    candidates = {int(row[0]): str(row[1]) for row in rows if not (row[2] or {}).get(DELETED_FLAG)}
    if not candidates:
        return []
    # A requeued job shares its original's file: keep a file any recent or live job still uses.
    names = set(candidates.values())
    users = await session.execute(
        select(Job.stored_name).where(
            Job.stored_name.in_(names),
            Job.id.not_in(list(candidates)),
            or_(Job.state.not_in(ENDED), ended_at >= cutoff),
        )
    )
    keep = {str(row[0]) for row in users}
    purged: list[int] = []
    for job_id, stored_name in sorted(candidates.items()):
        if stored_name in keep:
            continue
        await asyncio.to_thread(_unlink, settings.upload_dir / stored_name)
        await asyncio.to_thread(_unlink, printer_thumbnail_path(settings.upload_dir, stored_name))
        job = await session.get(Job, job_id)
        if job is not None:
            job.flags = {**(job.flags or {}), DELETED_FLAG: now.isoformat()}
            purged.append(job_id)
    await session.flush()
    if purged:
        log.info("deleted the files of %s job(s) that ended over %s days ago", len(purged), days)
    return purged


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
