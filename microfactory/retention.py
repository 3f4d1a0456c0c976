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
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.accounts.models import User
from microfactory.config import Settings
from microfactory.designs.models import Design, DesignFile
from microfactory.errors import PayloadTooLargeError
from microfactory.jobs.models import Job, JobState

log = logging.getLogger("microfactory.retention")

ENDED = (JobState.FINISHED, JobState.FAILED, JobState.CANCELLED, JobState.CLEARED)
DELETED_FLAG = "file_deleted_at"


def _file_deleted(job: Job) -> bool:
    return bool((job.flags or {}).get(DELETED_FLAG))


def _ended_at(job: Job) -> dt.datetime:
    return job.ended_at or job.cleared_at or job.updated_at


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
    cutoff = now - dt.timedelta(days=days)
    result = await session.execute(
        select(Job).where(Job.state.in_(ENDED)).order_by(Job.id).limit(1000)
    )
    candidates = [j for j in result.scalars() if not _file_deleted(j) and _ended_at(j) < cutoff]
    if not candidates:
        return []
    names = {j.stored_name for j in candidates}
    # A requeued job shares its original's file: keep a file any recent or live job still uses.
    users = await session.execute(select(Job).where(Job.stored_name.in_(names)))
    keep = {
        j.stored_name
        for j in users.scalars()
        if j.state not in ENDED or (not _file_deleted(j) and _ended_at(j) >= cutoff)
    }
    purged: list[int] = []
    for job in candidates:
        if job.stored_name in keep:
            continue
        await asyncio.to_thread(_unlink, settings.upload_dir / job.stored_name)
        job.flags = {**(job.flags or {}), DELETED_FLAG: now.isoformat()}
        purged.append(job.id)
    await session.flush()
    if purged:
        log.info("deleted the files of %s job(s) that ended over %s days ago", len(purged), days)
    return purged


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
