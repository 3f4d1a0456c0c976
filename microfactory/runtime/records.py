"""What the machine page shows from other domains: the machine's job and its maintenance log.

The machine registry sits below the jobs and the bookings (they import it), so its page gets
these records through `app.state.machine_records`, which this layer (above the domains)
provides, as it provides the command channel.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.bookings import service as booking_service
from microfactory.jobs.models import Job


class MachineRecords:
    """Reads the job and maintenance records of one machine for its page."""

    async def job(self, *, session: AsyncSession, job_id: int) -> dict[str, Any] | None:
        """Return the job's title, state and owner id, or None if it is gone."""
        job = await session.get(Job, job_id)
        if job is None:
            return None
        return {
            "id": job.id,
            "title": job.title,
            "state": job.state.value,
            "owner_id": job.owner_id,
            "lines_total": job.lines_total,
            "started_at": job.started_at,
        }

    async def maintenance(
        self, *, session: AsyncSession, machine_id: int, limit: int = 20
    ) -> list[dict[str, Any]]:
        """Return the machine's maintenance blocks, past and planned, latest first."""
        blocks = await booking_service.list_maintenance(
            session=session, machine_id=machine_id, include_past=True
        )
        blocks.sort(key=lambda b: b.start_at, reverse=True)
        return [
            {"id": b.id, "start_at": b.start_at, "end_at": b.end_at, "reason": b.reason}
            for b in blocks[:limit]
        ]
