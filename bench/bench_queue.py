"""Queue benchmark: 1,000 queued jobs across 50 machines of mixed kinds and capabilities.

1. Dispatch decision time: one `decide()` over the whole queue (goal: under 50 ms).
2. A simulated day: every job queued at 08:00; makespan and mean wait of the matcher,
   against FIFO-to-first-free-machine in the same run, and against the lower bound
   (per compatibility class: its work / its machines; and the longest job).

Run: .venv/bin/python bench/bench_queue.py
"""

from __future__ import annotations

import datetime as dt
import heapq
import platform
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from microfactory.jobs.matcher import (
    MachineView,
    QueuedJob,
    decide,
    incompatibility,
)

T0 = dt.datetime(2026, 11, 24, 8, tzinfo=dt.UTC)
SEED = 20261124


def make_shop(rng: random.Random) -> tuple[list[QueuedJob], list[MachineView]]:
    """Return 1,000 jobs and 50 machines with a realistic mix of kinds and capabilities."""
    machines: list[MachineView] = []
    mid = 0

    def add(n: int, **kw: object) -> None:
        nonlocal mid
        for _ in range(n):
            mid += 1
            machines.append(MachineView(id=mid, **kw))  # type: ignore[arg-type]

    add(
        25,
        kind="fdm_printer",
        volume_mm=(220.0, 220.0, 250.0),
        nozzle_mm=0.4,
        loaded_material="PLA",
    )
    add(
        5,
        kind="fdm_printer",
        volume_mm=(300.0, 300.0, 300.0),
        nozzle_mm=0.4,
        loaded_material="PETG",
    )
    add(
        5,
        kind="fdm_printer",
        volume_mm=(180.0, 180.0, 180.0),
        nozzle_mm=0.6,
        loaded_material="PLA",
        tags=frozenset({"enclosure"}),
    )
    add(8, kind="cnc_mill", volume_mm=(400.0, 400.0, 75.0))
    add(7, kind="laser_cutter", volume_mm=(600.0, 400.0, 20.0))

    jobs: list[QueuedJob] = []
    # 60 members; a few submit most of the work (Zipf-like), as in real shops.
    weights = [1.0 / (i + 1) for i in range(60)]
    for i in range(1000):
        owner = rng.choices(range(1, 61), weights)[0]
        r = rng.random()
        kw: dict[str, object]
        if r < 0.70:
            sub = rng.random()
            if sub < 0.75:
                kw = {
                    "kind": "fdm_printer",
                    "nozzle_mm": 0.4,
                    "material": "PLA",
                    "size_mm": (rng.uniform(10, 200), rng.uniform(10, 200), rng.uniform(5, 200)),
                }
            elif sub < 0.87:
                kw = {
                    "kind": "fdm_printer",
                    "nozzle_mm": 0.4,
                    "material": "PETG",
                    "size_mm": (rng.uniform(50, 290), rng.uniform(50, 290), rng.uniform(5, 280)),
                }
            else:
                kw = {
                    "kind": "fdm_printer",
                    "nozzle_mm": 0.6,
                    "material": "PLA",
                    "size_mm": (rng.uniform(10, 170), rng.uniform(10, 170), rng.uniform(5, 170)),
                    "tags": frozenset({"enclosure"}) if rng.random() < 0.5 else frozenset(),
                }
            minutes = rng.lognormvariate(4.3, 0.7)  # median ~74 min, long tail
            kw["heats"] = True
        elif r < 0.85:
            kw = {"kind": "cnc_mill", "size_mm": (rng.uniform(20, 390), rng.uniform(20, 390), 10.0)}
            minutes = rng.lognormvariate(3.8, 0.6)
        else:
            kw = {
                "kind": "laser_cutter",
                "size_mm": (rng.uniform(20, 590), rng.uniform(20, 390), 3.0),
            }
            minutes = rng.lognormvariate(2.8, 0.6)
        jobs.append(
            QueuedJob(
                id=i + 1,
                owner_id=owner,
                created_at=T0 - dt.timedelta(seconds=1000 - i),
                estimated_s=round(min(minutes, 600) * 60, 1),
                **kw,  # type: ignore[arg-type]
            )
        )
    return jobs, machines


def fifo_assign(queue: list[QueuedJob], machines: list[MachineView]) -> list[tuple[int, int]]:
    """FIFO to the first free machine: jobs in arrival order, machines in id order."""
    free = sorted((m for m in machines if m.idle and m.bed_clear), key=lambda m: m.id)
    taken: set[int] = set()
    pairs = []
    for job in sorted(queue, key=lambda j: (j.created_at, j.id)):
        for m in free:
            if m.id not in taken and incompatibility(job, m) is None:
                taken.add(m.id)
                pairs.append((job.id, m.id))
                break
    return pairs


def simulate(policy: str, jobs: list[QueuedJob], machines: list[MachineView]) -> dict[str, float]:
    """Run a day: dispatch whenever a machine frees, until every job has run."""
    by_id = {j.id: j for j in jobs}
    queue = dict(by_id)
    state = {m.id: m for m in machines}
    now = 0.0
    events: list[tuple[float, int]] = []  # (finish time, machine id)
    waits: dict[int, float] = {}
    usage: dict[int, float] = defaultdict(float)
    while queue or events:
        views = list(state.values())
        if policy == "matcher":
            decision = decide(list(queue.values()), views, recent_usage_s=usage)
            pairs = [(a.job_id, a.machine_id) for a in decision.assignments]
        else:
            pairs = fifo_assign(list(queue.values()), views)
        for job_id, machine_id in pairs:
            job = queue.pop(job_id)
            waits[job_id] = now
            usage[job.owner_id] += job.duration_s
            state[machine_id] = _with(state[machine_id], idle=False)
            heapq.heappush(events, (now + job.duration_s, machine_id))
        if not events:
            if queue:
                raise RuntimeError(f"{len(queue)} jobs can never run")
            break
        now, machine_id = heapq.heappop(events)
        state[machine_id] = _with(state[machine_id], idle=True)
        while events and events[0][0] == now:
            _, other = heapq.heappop(events)
            state[other] = _with(state[other], idle=True)
    member_waits: dict[int, list[float]] = defaultdict(list)
    for job_id, wait in waits.items():
        member_waits[by_id[job_id].owner_id].append(wait)
    light = [statistics.mean(w) for w in member_waits.values() if len(w) <= 3]
    return {
        "makespan_h": now / 3600,
        "mean_wait_h": statistics.mean(waits.values()) / 3600,
        "light_members_mean_wait_h": statistics.mean(light) / 3600 if light else 0.0,
    }


def _with(m: MachineView, **changes: object) -> MachineView:
    from dataclasses import replace

    return replace(m, **changes)  # type: ignore[arg-type]


def lower_bound(jobs: list[QueuedJob], machines: list[MachineView]) -> float:
    """Return a makespan no schedule can beat, in hours.

    For every set of machines that some jobs are restricted to, the work of those jobs
    divided by the set's size; and the longest single job.
    """
    groups: dict[frozenset[int], float] = defaultdict(float)
    for job in jobs:
        ids = frozenset(m.id for m in machines if incompatibility(job, m) is None)
        groups[ids] += job.duration_s
    bound = max(j.duration_s for j in jobs)
    # A union of groups: the jobs confined to it need at least their work / its size.
    keys = list(groups)
    for key in keys:
        work = sum(w for k, w in groups.items() if k <= key)
        bound = max(bound, work / len(key))
    return bound / 3600


def main() -> None:
    rng = random.Random(SEED)
    jobs, machines = make_shop(rng)
    timings = []
    for _ in range(20):
        start = time.perf_counter()
        decide(jobs, machines, recent_usage_s={}, max_heating=None)
        timings.append((time.perf_counter() - start) * 1000)
    ours = simulate("matcher", jobs, machines)
    fifo = simulate("fifo", jobs, machines)
    bound = lower_bound(jobs, machines)
    py = platform.python_version()
    print(f"date: {dt.date.today()}  machine: {platform.machine()}, python {py}")
    print(
        f"decision over 1,000 jobs x 50 machines: median {statistics.median(timings):.1f} ms, "
        f"max {max(timings):.1f} ms (goal < 50 ms)"
    )
    print(f"lower bound on makespan: {bound:.2f} h")
    for name, r in (("matcher", ours), ("FIFO to first free", fifo)):
        print(
            f"{name:20s} makespan {r['makespan_h']:.2f} h ({r['makespan_h'] / bound:.3f}x bound), "
            f"mean wait {r['mean_wait_h']:.2f} h, light members' mean wait "
            f"{r['light_members_mean_wait_h']:.2f} h"
        )


if __name__ == "__main__":
    main()
