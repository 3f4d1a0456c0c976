"""Matcher rules: compatibility, fair share, priorities, staggered start, bed clear."""

from __future__ import annotations

import datetime as dt

from microfactory.jobs.matcher import MachineView, QueuedJob, decide, incompatibility, order_queue

T0 = dt.datetime(2026, 11, 24, 8, tzinfo=dt.UTC)


def job(i: int, owner: int = 1, minutes: int = 0, **kw: object) -> QueuedJob:
    base: dict[str, object] = {
        "id": i,
        "owner_id": owner,
        "kind": "fdm_printer",
        "created_at": T0 + dt.timedelta(minutes=minutes),
        "estimated_s": 3600.0,
    }
    base.update(kw)
    return QueuedJob(**base)  # type: ignore[arg-type]


def printer(i: int, **kw: object) -> MachineView:
    base: dict[str, object] = {
        "id": i,
        "kind": "fdm_printer",
        "volume_mm": (220.0, 220.0, 250.0),
        "nozzle_mm": 0.4,
        "loaded_material": "PLA",
    }
    base.update(kw)
    return MachineView(**base)  # type: ignore[arg-type]


def test_compatibility_rules() -> None:
    p = printer(1, tags=frozenset({"enclosure"}))
    assert incompatibility(job(1), p) is None
    assert incompatibility(job(1, kind="cnc_mill"), p) == "needs a cnc_mill"
    assert (
        incompatibility(job(1, size_mm=(230.0, 100.0, 10.0)), p) == "too big for the build volume"
    )
    assert (
        incompatibility(job(1, size_mm=(10.0, 10.0, 300.0)), p) == "too tall for the build volume"
    )
    assert incompatibility(job(1, nozzle_mm=0.6), p) == "sliced for a 0.6 mm nozzle"
    assert incompatibility(job(1, material="PETG"), p) == "needs PETG loaded"
    assert incompatibility(job(1, tags=frozenset({"enclosure"})), p) is None
    assert incompatibility(job(1, tags=frozenset({"ams"})), p) == "lacks tags ams"
    assert incompatibility(job(1, machine_id=2), p) == "pinned to another machine"
    assert incompatibility(job(1, max_hotend_c=300), printer(2, max_hotend_c=280)) is not None


def test_a_part_may_be_rotated_on_the_bed_but_not_tipped() -> None:
    narrow = printer(1, volume_mm=(300.0, 100.0, 100.0))
    assert incompatibility(job(1, size_mm=(90.0, 250.0, 50.0)), narrow) is None
    assert incompatibility(job(1, size_mm=(90.0, 50.0, 250.0)), narrow) is not None


def test_member_with_twenty_jobs_does_not_starve_a_member_with_one() -> None:
    flood = [job(i, owner=1, minutes=i) for i in range(1, 21)]
    single = job(100, owner=2, minutes=60)  # submitted after all of member 1's jobs
    order = [j.id for j in order_queue([*flood, single], recent_usage_s={})]
    assert order.index(100) <= 1
    # FIFO would have put it last.
    assert order.index(100) < order.index(3)


def test_recent_heavy_users_wait_behind_light_ones() -> None:
    heavy = job(1, owner=1, minutes=0)
    light = job(2, owner=2, minutes=5)
    order = order_queue([heavy, light], recent_usage_s={1: 10 * 3600.0, 2: 0.0})
    assert [j.id for j in order] == [2, 1]


def test_operator_priority_comes_first() -> None:
    order = order_queue([job(1, minutes=0), job(2, owner=2, minutes=9, priority=5)], {})
    assert [j.id for j in order] == [2, 1]


def test_each_machine_takes_one_job_and_uncleared_beds_take_none() -> None:
    machines = [printer(1), printer(2, bed_clear=False), printer(3, idle=False)]
    decision = decide([job(1), job(2, owner=2)], machines)
    assert [(a.job_id, a.machine_id) for a in decision.assignments] == [(1, 1)]
    assert 2 in decision.waiting


def test_staggered_start_caps_machines_heating_at_once() -> None:
    machines = [printer(i) for i in range(1, 5)] + [printer(9, idle=False, heating=True)]
    jobs = [job(i, owner=i, heats=True) for i in range(1, 5)]
    decision = decide(jobs, machines, max_heating=2)
    assert len(decision.assignments) == 1  # one machine already heats; one more may start
    assert all("staggered start" in r for r in decision.waiting.values())
    assert len(decide(jobs, machines, max_heating=None).assignments) == 4


def test_a_booked_machine_is_skipped() -> None:
    machines = [printer(1), printer(2)]

    def blocked(j: QueuedJob, m: MachineView) -> str | None:
        return "booked by another member" if m.id == 1 else None

    decision = decide([job(1)], machines, blocked=blocked)
    assert [(a.job_id, a.machine_id) for a in decision.assignments] == [(1, 2)]
    only_booked = decide([job(1)], [printer(1)], blocked=blocked)
    assert only_booked.waiting[1] == "waiting: booked by another member"


def test_best_fit_keeps_the_big_machine_for_the_big_job() -> None:
    small = printer(1, volume_mm=(180.0, 180.0, 180.0))
    big = printer(2, volume_mm=(300.0, 300.0, 300.0))
    jobs = [
        job(1, size_mm=(50.0, 50.0, 50.0)),
        job(2, owner=2, minutes=1, size_mm=(250.0, 250.0, 50.0)),
    ]
    decision = decide(jobs, [big, small])
    assert {(a.job_id, a.machine_id) for a in decision.assignments} == {(1, 1), (2, 2)}


def test_a_job_no_machine_can_run_says_so() -> None:
    decision = decide([job(1, size_mm=(500.0, 500.0, 10.0))], [printer(1)])
    assert decision.waiting[1] == "no machine in the shop can run this job"
