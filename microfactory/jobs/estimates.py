"""Job time estimates per machine, and the live time left for a running job.

A job's file is analysed when it is uploaded, with the limits of the machine it asks for if
any. When it starts on a machine whose limits differ, `estimate_for_machine` plans the file
again with that machine's own limits (no transaction open while it runs).

Live ETA: at the start the plan (the estimate for this machine, and its time profile over
the file) is all there is; as the job runs, the measured pace (elapsed time over the plan's
time for the part done) takes over, weighted by the share of the plan already done. This is
how PrusaSlicer's M73 progress and Mainsail's "file" estimate behave: the ETA starts from the
estimate and converges on the truth, and a file's slow and fast parts (a detailed top, a fast
infill) are followed from the profile rather than assumed uniform.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory.analysis import AnalysisError, analyse_gcode_async
from microfactory.analysis.gcode import MachineLimits, limits_from_dict
from microfactory.jobs.models import Job
from microfactory.machines.models import Machine


def machine_limits(machine: Machine | None) -> MachineLimits | None:
    """Return the motion limits stored on a machine (read at connect, or an override)."""
    stored = (machine.capabilities or {}).get("motion_limits") if machine is not None else None
    if not stored:
        return None
    try:
        return limits_from_dict(stored)
    except (TypeError, ValueError):
        return None  # a bad stored value must not block uploads: plan with the defaults


async def estimate_for_machine(
    sessionmaker: async_sessionmaker[AsyncSession], upload_dir: Path, job_id: int, machine_id: int
) -> float | None:
    """Re-plan a job's file with its machine's own limits and store the new estimate.

    Called when a job starts on a machine it was not analysed for. No transaction is open
    while the file is analysed. Returns the new estimate, or None if nothing changed.
    """
    async with sessionmaker() as session:
        job = await session.get(Job, job_id)
        machine = await session.get(Machine, machine_id)
        if job is None or machine is None or not job.stored_name:
            return None
        limits = machine_limits(machine)
        stored = (machine.capabilities or {}).get("motion_limits") or {}
        stamp = {"machine_id": machine_id, "read_at": stored.get("read_at")}
        if limits is None or (job.analysis or {}).get("estimate_for") == stamp:
            return None
        path = upload_dir / job.stored_name
    try:
        data = (await analyse_gcode_async(path, machine_limits=limits)).as_dict()
    except AnalysisError:
        return None
    async with sessionmaker() as session, session.begin():
        job = await session.get(Job, job_id)
        if job is None:
            return None
        job.analysis = {
            **(job.analysis or {}),
            "estimated_time_s": data["estimated_time_s"],
            "time_profile": data.get("time_profile", []),
            "limits_source": data["limits_source"],
            "estimate_for": stamp,
        }
    return float(data["estimated_time_s"])


def planned_done_s(analysis: dict[str, Any], fraction: float) -> float | None:
    """Return the planned time (s) for the first `fraction` of the file's lines."""
    total = analysis.get("estimated_time_s")
    if not isinstance(total, int | float) or total <= 0:
        return None
    fraction = min(max(fraction, 0.0), 1.0)
    profile = analysis.get("time_profile") or []
    if len(profile) < 2 or not profile[-1]:
        return float(total) * fraction
    x = fraction * (len(profile) - 1)
    k = min(int(x), len(profile) - 2)
    here = profile[k] + (profile[k + 1] - profile[k]) * (x - k)
    return float(total) * here / profile[-1]  # the profile leaves out dwells: scale to total


def live_eta_s(
    analysis: dict[str, Any], lines_acked: int, lines_total: int, elapsed_s: float | None
) -> float | None:
    """Return the seconds left, blending the plan with the measured pace."""
    total = analysis.get("estimated_time_s")
    if not isinstance(total, int | float) or total <= 0 or lines_total <= 0:
        return None
    done = planned_done_s(analysis, lines_acked / lines_total)
    if done is None:
        return None
    left = float(total) - done
    if elapsed_s is None or elapsed_s <= 0 or done <= 0:
        return round(max(left, 0.0), 1)
    pace = elapsed_s / done  # > 1: slower than planned
    weight = done / float(total)
    return round(max(left * ((1.0 - weight) + weight * pace), 0.0), 1)
