"""The live ETA starts from the plan and converges on the measured pace."""

from __future__ import annotations

import pytest

from microfactory.jobs.estimates import live_eta_s, planned_done_s

# A 1000 s plan whose second half of the lines takes 800 s (a slow, detailed top).
PROFILE = [round(200 * min(p, 50) / 50 + 800 * max(p - 50, 0) / 50, 1) for p in range(101)]
ANALYSIS = {"estimated_time_s": 1000.0, "time_profile": PROFILE}


def test_before_any_progress_the_eta_is_the_estimate() -> None:
    assert live_eta_s(ANALYSIS, 0, 1000, None) == 1000.0
    assert live_eta_s(ANALYSIS, 0, 1000, 5.0) == 1000.0


def test_the_profile_says_how_much_time_a_share_of_lines_is() -> None:
    assert planned_done_s(ANALYSIS, 0.5) == pytest.approx(200.0)
    assert planned_done_s(ANALYSIS, 0.75) == pytest.approx(600.0)
    # Without a profile, time is spread evenly over the lines.
    assert planned_done_s({"estimated_time_s": 1000.0}, 0.5) == pytest.approx(500.0)


def test_on_plan_the_eta_is_the_planned_time_left() -> None:
    # Half the lines done in exactly the planned 200 s: 800 s are left, not 200.
    assert live_eta_s(ANALYSIS, 500, 1000, 200.0) == pytest.approx(800.0)


def test_a_slow_machine_pulls_the_eta_towards_its_pace_as_the_job_goes() -> None:
    # The machine runs 20 % slower than planned. Early, the plan dominates; late, the pace.
    truth_left = [(f, 1.2 * (1000 - planned_done_s(ANALYSIS, f))) for f in (0.1, 0.5, 0.9)]
    errors = []
    for f, truth in truth_left:
        done = planned_done_s(ANALYSIS, f)
        assert done is not None
        eta = live_eta_s(ANALYSIS, int(f * 1000), 1000, 1.2 * done)
        assert eta is not None
        errors.append(abs(eta - truth) / truth)
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.03


def test_no_estimate_means_no_eta() -> None:
    assert live_eta_s({}, 10, 100, 5.0) is None
    assert live_eta_s({"estimated_time_s": 100.0}, 10, 0, 5.0) is None
