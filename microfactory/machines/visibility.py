"""What of a machine's live status a caller may see: members see only their own jobs.

The status snapshot carries the running job's id and the last G-code line the machine
acknowledged. Operators see everything; a member sees them only when the job is theirs,
and otherwise only that the machine is busy (its state, temperatures, position).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import column, select, table
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.accounts.models import Role, User

# Two columns of the jobs table, read through a stub: machines sit below jobs in the import
# graph (jobs import machines), so this module must not import the jobs package.
_jobs = table("jobs", column("id"), column("owner_id"))

# Driver-specific status fields that describe the job rather than the machine.
_JOB_EXTRA_KEYS = ("file", "job", "line", "gcode", "command")


@dataclass(frozen=True)
class Viewer:
    """Who looks: a plain copy of the user, usable after the request's session is gone."""

    id: int
    role: Role

    @classmethod
    def of(cls, user: User | Viewer) -> Viewer:
        """Copy what visibility needs from a user."""
        return cls(id=user.id, role=user.role)


def sees_all(user: User | Viewer) -> bool:
    """Return whether this user sees every job's details (operators and admins)."""
    return user.role in (Role.OPERATOR, Role.ADMIN)


async def job_owners(*, session: AsyncSession, job_ids: Iterable[int | None]) -> dict[int, int]:
    """Return the owner of each of these jobs."""
    ids = {j for j in job_ids if j is not None}
    if not ids:
        return {}
    rows = await session.execute(select(_jobs.c.id, _jobs.c.owner_id).where(_jobs.c.id.in_(ids)))
    return {int(row[0]): int(row[1]) for row in rows}


def status_for(
    status: dict[str, Any], *, user: User | Viewer, owners: dict[int, int]
) -> dict[str, Any]:
    """Return the part of a live status this user may see."""
    job_id = status.get("job_id")
    if job_id is None or sees_all(user) or owners.get(job_id) == user.id:
        return status
    shown = dict(status)
    shown["job_id"] = None
    progress = shown.get("progress")
    if isinstance(progress, dict):
        shown["progress"] = {**progress, "last_line": None}
    extra = shown.get("extra")
    if isinstance(extra, dict):
        shown["extra"] = {
            k: v for k, v in extra.items() if not any(word in k.lower() for word in _JOB_EXTRA_KEYS)
        }
    return shown


async def visible_statuses(
    *, session: AsyncSession, user: User, statuses: dict[int, dict[str, Any]]
) -> dict[int, dict[str, Any]]:
    """Filter the statuses of several machines (by machine id) for this user."""
    if sees_all(user):
        return statuses
    owners = await job_owners(
        session=session, job_ids=(st.get("job_id") for st in statuses.values())
    )
    return {mid: status_for(st, user=user, owners=owners) for mid, st in statuses.items()}
