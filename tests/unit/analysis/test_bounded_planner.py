"""The bounded-lookahead planner (drivers/planner.py) against hand-computed cases.

A firmware planner holds BLOCK_BUFFER_SIZE - 1 usable blocks and plans the last of them to
stop. So on a straight line of tiny segments the speed is bounded by the distance the
blocks behind the running one cover: v = sqrt(2 a L d) with L = BLOCK_BUFFER_SIZE - 2.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from drivers.planner import (
    MachineLimits,
    MotionQueue,
    PlanLimits,
    grbl_arc_segments,
    limits_from_dict,
    lookahead_window,
    plan_times,
)
from microfactory.analysis import analyse_gcode, gcode

DATA = Path(__file__).resolve().parents[2] / "data" / "gcode"


def grbl(**changes: object) -> MachineLimits:
    """Stock GRBL 1.1 limits with a fast axis rate, so only the acceleration binds."""
    base = MachineLimits.grbl()
    values: dict[str, object] = {"max_feedrate": (5000 / 60, 5000 / 60, 5000 / 60, 120.0)}
    values.update(changes)
    return limits_from_dict(values, base)


def tiny_line(n: int, seg: float, feed_mm_min: float) -> str:
    lines = [f"G1 X{(k + 1) * seg:.4f} F{feed_mm_min:g}" for k in range(n)]
    return "M3 S100\n" + "\n".join(lines) + "\n"


def test_tiny_segments_are_bounded_by_the_stopping_distance_in_the_buffer() -> None:
    n, d, a = 5000, 0.02, 10.0
    lim = grbl()
    got = analyse_gcode(tiny_line(n, d, 1500), machine_limits=lim).estimated_time_s
    # 16 blocks: 15 usable, one runs, so 14 blocks of 0.02 mm must bring the machine to rest.
    window = 14
    v = math.sqrt(2 * a * window * d)  # 2.37 mm/s, far below the 25 mm/s asked for
    # Every block in between enters and leaves at v, speeding up to sqrt(v^2 + a d) halfway.
    per_block = 2 * (math.sqrt(v * v + a * d) - v) / a
    # Ramps up over the first 14 blocks and down over the last 14 at full acceleration.
    expected = 2 * v / a + (n - 2 * window) * per_block
    assert got == pytest.approx(expected, abs=0.01)
    assert got > 10 * (n * d / 25.0)  # the feed-only time is 4 s


def test_without_the_buffer_bound_the_same_line_cruises_at_the_feed() -> None:
    n, d, a, f = 5000, 0.02, 10.0, 25.0
    lim = grbl(block_buffer_size=0)
    got = analyse_gcode(tiny_line(n, d, 1500), machine_limits=lim).estimated_time_s
    ramp = f * f / (2 * a)  # 31.25 mm each way
    expected = 2 * f / a + (n * d - 2 * ramp) / f
    assert got == pytest.approx(expected, abs=0.01)


def test_a_bigger_buffer_goes_faster_by_the_square_root_of_its_length() -> None:
    program = tiny_line(20000, 0.01, 3000)
    t16 = analyse_gcode(program, machine_limits=grbl()).estimated_time_s
    t58 = analyse_gcode(program, machine_limits=grbl(block_buffer_size=58)).estimated_time_s
    # Cruise time dominates: speed scales with sqrt(window), 14 vs 56 blocks.
    assert t16 / t58 == pytest.approx(2.0, rel=0.02)


def test_long_moves_are_not_affected_by_the_buffer() -> None:
    program = "M3 S100\nG1 X100 F600\nG1 Y100\nG1 X0\nG1 Y0\n"
    bounded = analyse_gcode(program, machine_limits=grbl()).estimated_time_s
    unbounded = analyse_gcode(program, machine_limits=grbl(block_buffer_size=0)).estimated_time_s
    assert bounded == pytest.approx(unbounded, abs=1e-6)
    # Four 100 mm sides at 10 mm/s and 10 mm/s^2. At each 90 degree corner GRBL allows
    # v_j^2 = a_j * jd * sin(45) / (1 - sin(45)), a_j the acceleration along the diagonal
    # (10 / cos 45 = 14.1 mm/s^2): about 0.58 mm/s.
    f, a, s = 10.0, 10.0, math.sqrt(0.5)
    vj = math.sqrt(a / s * 0.01 * s / (1 - s))

    def side(v0: float, v1: float) -> float:
        ramp_d = (f * f - v0 * v0) / (2 * a) + (f * f - v1 * v1) / (2 * a)
        return (f - v0) / a + (f - v1) / a + (100 - ramp_d) / f

    expected = side(0, vj) + 2 * side(vj, vj) + side(vj, 0)
    assert bounded == pytest.approx(expected, abs=0.01)


def test_window_follows_the_buffer_size() -> None:
    assert lookahead_window(MachineLimits()) == 14
    assert lookahead_window(MachineLimits(block_buffer_size=32)) == 30
    assert lookahead_window(MachineLimits(block_buffer_size=0)) > 10_000


def test_grbl_arcs_are_cut_within_the_arc_tolerance() -> None:
    circle = "M3 S100\nG0 X10 Y0\nG2 X10 Y0 I-10 J0 F300\n"
    fine = analyse_gcode(circle, machine_limits=grbl())
    coarse = analyse_gcode(circle, machine_limits=grbl(arc_tolerance=0.05))
    # mc_arc: floor(0.5 * 2 pi * 10 / sqrt(tol * (2 * 10 - tol))) chords.
    assert grbl_arc_segments(2 * math.pi, 10, 0.002) == 157
    assert grbl_arc_segments(2 * math.pi, 10, 0.05) == 31
    assert fine.move_count == 1 + 157
    assert coarse.move_count == 1 + 31
    # Fewer, longer chords turn sharper corners: the coarse circle is not faster here, but it
    # is timed from its own segments.
    assert fine.estimated_time_s != coarse.estimated_time_s


def _power_ramp(laser_word: str) -> str:
    lines = ["G21 G90", f"{laser_word} S0", "G0 X0 Y0"]
    for k in range(400):
        lines.append(f"G1 X{(k + 1) * 0.1:.2f} S{k % 10 * 100} F1200")
    lines.append("M5")
    return "\n".join(lines) + "\n"


def test_laser_mode_power_changes_on_moves_do_not_stop_the_machine() -> None:
    laser = grbl(laser_mode=True)
    spindle = grbl(laser_mode=False)
    t_laser = analyse_gcode(_power_ramp("M4"), machine_limits=laser).estimated_time_s
    t_spindle = analyse_gcode(_power_ramp("M3"), machine_limits=spindle).estimated_time_s
    # Without laser mode every new S empties the planner: 400 stops from rest.
    assert t_spindle > 2 * t_laser
    # M4 (dynamic power) and M3 plan the same motion in laser mode.
    t_m3 = analyse_gcode(_power_ramp("M3"), machine_limits=laser).estimated_time_s
    assert t_m3 == pytest.approx(t_laser, abs=1e-6)


def _random_moves(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rnd = random.Random(seed)
    d = np.zeros((4, n))
    feed = np.zeros(n)
    for k in range(n):
        length = rnd.choice([0.02, 0.05, 0.3, 2.0, 15.0])
        ang = rnd.uniform(-0.6, 0.6) if rnd.random() < 0.8 else rnd.uniform(-3, 3)
        d[0, k], d[1, k] = length * math.cos(ang), length * math.sin(ang)
        feed[k] = rnd.choice([5.0, 20.0, 60.0])
    return d, feed


def _run_queue(lim: MachineLimits, d: np.ndarray, feed: np.ndarray) -> float:
    """Stream moves into a MotionQueue, keeping it full, and return the machine time."""
    q = MotionQueue(lim)
    for k in range(d.shape[1]):
        delta = (float(d[0, k]), float(d[1, k]), float(d[2, k]), float(d[3, k]))
        while q.full:
            q.advance(q.time_to_next() + 1e-12)
        block = q.make_block(delta, float(feed[k]))
        assert block is not None
        q.push(block, delta)
    while len(q):
        q.advance(q.time_to_next() + 1e-12)
    return q.clock


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("firmware", ["grbl", "marlin-jd"])
def test_the_simulators_queue_takes_the_time_the_analyser_plans(seed: int, firmware: str) -> None:
    lim = (
        MachineLimits.grbl()
        if firmware == "grbl"
        else MachineLimits(junction_deviation=0.013, print_acceleration=800.0)
    )
    d, feed = _random_moves(seed, 600)
    n = d.shape[1]
    first = np.zeros(n, dtype=bool)
    last = np.zeros(n, dtype=bool)
    first[0] = last[-1] = True
    planned = float(
        plan_times(d, feed, first, last, PlanLimits.constant(lim), lookahead_window(lim)).sum()
    )
    assert _run_queue(lim, d, feed) == pytest.approx(planned, rel=1e-6)


def test_stepping_the_queue_in_small_ticks_matches_whole_blocks() -> None:
    lim = MachineLimits.grbl()
    d, feed = _random_moves(7, 200)
    whole = _run_queue(lim, d, feed)
    q = MotionQueue(lim)
    k = 0
    while k < d.shape[1] or len(q):
        while k < d.shape[1] and not q.full:
            delta = (float(d[0, k]), float(d[1, k]), 0.0, 0.0)
            block = q.make_block(delta, float(feed[k]))
            assert block is not None
            q.push(block, delta)
            k += 1
        q.advance(min(0.01, q.time_to_next() + 1e-12))
    assert q.clock == pytest.approx(whole, rel=1e-3)


@pytest.mark.parametrize("sample", ["fdm/bracket.gcode", "cnc/helloworld-cambam.nc"])
def test_chunked_analysis_equals_one_pass(sample: str) -> None:
    path = DATA / sample
    whole = analyse_gcode(path, chunk_bytes=1 << 30).as_dict()
    chunked = analyse_gcode(path, chunk_bytes=4096).as_dict()
    assert chunked["estimated_time_s"] == pytest.approx(whole["estimated_time_s"], abs=0.02)
    for key in ("line_count", "move_count", "filament_mm", "bbox_mm", "layers", "process"):
        assert chunked[key] == whole[key], key


_ARC = re.compile(rb"^(?:N\d+ ?)?G0?[23](?!\d)")
_MOTION = re.compile(rb"^(?:N\d+ ?)?(?:G0?[0-3](?!\d)|[XYZ])")


@pytest.mark.parametrize(
    ("sample", "chunk_bytes"),
    [
        ("cnc/helloworld-cambam.nc", 509),  # 235 arcs: chunks start on arcs
        ("laser/laser-spiral.nc", 1021),  # tiny segments: the 16-block buffer binds
        ("fdm/bracket.gcode", 4099),  # extrusions cut in the middle of a perimeter
    ],
)
@pytest.mark.parametrize("buffer", [16, 0])
def test_chunk_boundaries_inside_moves_and_arcs_change_nothing(
    sample: str, chunk_bytes: int, buffer: int
) -> None:
    """The streamed analysis gives the whole-file result exactly, every field of it.

    Each chunk boundary falls between two moves the planner links (a junction and the
    look-ahead window span it), on some of them the next chunk starts with an arc whose
    start point is the last position of the chunk before.
    """
    path = DATA / sample
    chunks = list(gcode._split(path.read_bytes(), chunk_bytes))
    assert len(chunks) > 10
    starts = [c.split(b"\n", 1)[0].lstrip() for c in chunks[1:]]
    ends = [c.rstrip(b"\n").rsplit(b"\n", 1)[-1].lstrip() for c in chunks[:-1]]
    pairs = zip(ends, starts, strict=True)
    linked = sum(bool(_MOTION.match(a) and _MOTION.match(b)) for a, b in pairs)
    assert linked > len(chunks) // 2, "few boundaries fall between two moves"
    if "cambam" in sample:
        assert sum(bool(_ARC.match(s)) for s in starts) >= 3, "no chunk starts with an arc"
    lim = None if buffer else MachineLimits(block_buffer_size=0)
    if lim is not None and "fdm" not in sample:
        lim = replace(MachineLimits.grbl(), block_buffer_size=0)
    whole = analyse_gcode(path, machine_limits=lim, chunk_bytes=1 << 30).as_dict()
    streamed = analyse_gcode(path, machine_limits=lim, chunk_bytes=chunk_bytes).as_dict()
    assert streamed == whole
    assert whole["estimated_time_s"] > 0
    assert whole["move_count"] > 100


def test_limits_from_dict_reads_grbl_keys_and_refuses_nonsense() -> None:
    lim = limits_from_dict(
        {"firmware": "grbl", "max_acceleration": [50, 50, 20, 1000], "laser_mode": 1,
         "block_buffer_size": 16, "source": "$$", "read_at": "2026-01-01T00:00:00Z"}
    )  # fmt: skip
    assert lim.firmware == "grbl"
    assert lim.junction_deviation == 0.01  # from the GRBL defaults
    assert lim.laser_mode is True
    # The marlin driver's M503 reading names the ring size planner_blocks; a jerk may be 0.
    marlin = limits_from_dict({"planner_blocks": 32, "max_jerk": [8, 8, 0.4, 0]})
    assert marlin.block_buffer_size == 32
    assert marlin.max_jerk == (8.0, 8.0, 0.4, 0.0)
    with pytest.raises(ValueError, match="finite"):
        limits_from_dict({"junction_deviation": float("inf")})
    with pytest.raises(ValueError, match="block_buffer_size"):
        limits_from_dict({"block_buffer_size": 1})
