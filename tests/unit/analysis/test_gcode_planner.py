"""The vectorised planner against a plain sequential one, move by move.

The reference below follows PrusaSlicer's GCodeProcessor (process_G1, the reverse and forward
pass kernels, recalculate_trapezoids) one block at a time, with look-ahead over the whole
queue between synchronisation points. The analyser computes the same thing with array scans,
so the two must agree to rounding error on any program.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import pytest

from microfactory.analysis import MachineLimits, analyse_gcode, limits_from_dict


@dataclass
class Limits:
    acc: list[float]
    feed: list[float]
    jerk: list[float]
    p: float
    r: float
    t: float


@dataclass
class Block:
    dist: float
    acc: float
    cruise: float
    safe: float
    max_entry: float
    entry: float
    nominal: bool
    exit: float = 0.0


def _trapezoid_time(b: Block) -> float:
    a, d, v0, vc, v1 = b.acc, b.dist, b.entry, b.cruise, b.exit
    acc_d = max(0.0, (vc * vc - v0 * v0) / (2 * a))
    dec_d = max(0.0, (vc * vc - v1 * v1) / (2 * a))
    cru_d = d - acc_d - dec_d
    if cru_d < 0:
        acc_d = min(max((2 * a * d - v0 * v0 + v1 * v1) / (4 * a), 0.0), d)
        cru_d = 0.0
        vc = math.sqrt(max(0.0, v0 * v0 + 2 * a * acc_d))
    dec_d = d - acc_d - cru_d
    t = (math.sqrt(max(0.0, v0 * v0 + 2 * a * acc_d)) - v0) / a
    t += cru_d / vc if vc > 0 else 0.0
    t += (vc - math.sqrt(max(0.0, vc * vc - 2 * a * dec_d))) / a
    return t


def _flush(blocks: list[Block]) -> float:
    n = len(blocks)
    for i in range(n - 1, 0, -1):
        cur, nxt = blocks[i - 1], blocks[i]
        if cur.nominal:
            cur.entry = cur.max_entry
        else:
            reach = math.sqrt(nxt.entry**2 + 2 * cur.acc * cur.dist)
            cur.entry = min(cur.max_entry, reach)
    for i in range(n - 1):
        prev, cur = blocks[i], blocks[i + 1]
        if not prev.nominal and prev.entry < cur.entry:
            cur.entry = min(cur.entry, math.sqrt(prev.entry**2 + 2 * prev.acc * prev.dist))
    for i, b in enumerate(blocks):
        b.exit = blocks[i + 1].entry if i + 1 < n else b.safe
    total = sum(_trapezoid_time(b) for b in blocks)
    blocks.clear()
    return total


def reference_time(program: list[tuple[str, tuple[float, ...]]], lim: Limits) -> float:
    """Plan a list of ("move", (dx, dy, dz, de, feed_mm_s)) / ("sync", ()) / ("M204", (p,))."""
    total = 0.0
    blocks: list[Block] = []
    prev_feed = 0.0
    prev_axis = [0.0] * 4
    prev_safe = 0.0
    for kind, args in program:
        if kind == "sync":
            total += _flush(blocks)
            continue
        if kind == "M204":
            lim.p = args[0]
            continue
        d, feed = list(args[:4]), args[4]
        xyz = math.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
        dist = xyz if xyz > 0 else abs(d[3])
        unit = [x / dist for x in d]
        factor = 1.0
        for k in range(4):
            if unit[k] != 0:
                factor = min(factor, lim.feed[k] / abs(feed * unit[k]))
        cruise = feed * factor
        axis = [cruise * u for u in unit]
        travel = (d[3] <= 0 and xyz > 0) or (d[3] > 0 and d[0] == 0 and d[1] == 0 and d[2] != 0)
        acc = lim.t if travel else (lim.p if xyz > 0 else lim.r)
        for k in range(4):
            if acc * abs(unit[k]) > lim.acc[k]:
                acc = lim.acc[k] / abs(unit[k])
        safe = cruise
        for k in range(4):
            if abs(axis[k]) > lim.jerk[k]:
                safe = min(safe, lim.jerk[k])
        vmax = safe
        if blocks and prev_feed > 1e-4:
            larger = prev_feed > cruise
            shrink = cruise / prev_feed if larger else 1.0
            vmax = cruise if larger else prev_feed
            vf = 1.0
            for k in range(4):
                ve, vn = prev_axis[k] * shrink * vf, axis[k] * vf
                if ve > vn:
                    jerk = ve - vn if (vn > 0 or ve < 0) else max(ve, -vn)
                else:
                    jerk = vn - ve if (vn < 0 or ve > 0) else max(-ve, vn)
                if jerk > lim.jerk[k]:
                    vf *= lim.jerk[k] / jerk
            vmax *= vf
            if prev_safe > vmax * 0.99 and safe > vmax * 0.99:
                vmax = safe
        allow = math.sqrt(safe * safe + 2 * acc * dist)
        blocks.append(Block(dist, acc, cruise, safe, vmax, min(vmax, allow), cruise <= allow))
        prev_feed, prev_axis, prev_safe = feed, axis, safe
    return total + _flush(blocks)


def random_program(seed: int, moves: int) -> tuple[str, list[tuple[str, tuple[float, ...]]]]:
    """Return G-code and the same program as deltas for the reference."""
    rnd = random.Random(seed)
    lines = [
        "M201 X2000 Y1800 Z200 E5000",
        "M203 X300 Y250 Z12 E60",
        "M204 P1200 R900 T2500",
        "M205 X9 Y7 Z0.4 E3",
        "G90",
        "M83",
    ]
    prog: list[tuple[str, tuple[float, ...]]] = []
    x = y = z = 0.0
    for i in range(moves):
        roll = rnd.random()
        feed = rnd.choice([600, 1200, 1800, 2700, 3600, 9000, 18000])
        if roll < 0.03:
            lines.append("G92 X0 Y0")  # a set without E makes PrusaSlicer synchronise
            prog.append(("sync", ()))
            x = y = 0.0
            continue
        if roll < 0.04 and i > moves // 2:
            lines.append("M204 P700")
            prog.append(("M204", (700.0,)))
            continue
        if roll < 0.10:
            de = rnd.choice([-0.8, 0.8])
            lines.append(f"G1 E{de:.1f} F{feed}")
            prog.append(("move", (0.0, 0.0, 0.0, de, feed / 60)))
            continue
        if roll < 0.13:
            dz = 0.2
            z = round(z + dz, 3)
            lines.append(f"G1 Z{z:.3f} F{feed}")
            prog.append(("move", (0.0, 0.0, dz, 0.0, feed / 60)))
            continue
        nx = round(x + rnd.uniform(-20, 20) * rnd.choice([0.02, 0.1, 1.0]), 3)
        ny = round(y + rnd.uniform(-20, 20) * rnd.choice([0.02, 0.1, 1.0]), 3)
        if nx == x and ny == y:
            nx += 0.5
        de = round(rnd.uniform(0.0, 0.05), 5) if roll < 0.8 else 0.0
        word_e = f" E{de:.5f}" if de else ""
        lines.append(f"G1 X{nx:.3f} Y{ny:.3f}{word_e} F{feed}")
        prog.append(("move", (nx - x, ny - y, 0.0, de, feed / 60)))
        x, y = nx, ny
    return "\n".join(lines) + "\n", prog


LIMITS: dict[str, Any] = {
    "acc": [2000.0, 1800.0, 200.0, 5000.0],
    "feed": [300.0, 250.0, 12.0, 60.0],
    "jerk": [9.0, 7.0, 0.4, 3.0],
    "p": 1200.0,
    "r": 900.0,
    "t": 2500.0,
}


@pytest.mark.parametrize(("seed", "moves"), [(1, 50), (2, 400), (3, 3000)])
def test_planner_matches_the_sequential_reference(seed: int, moves: int) -> None:
    text, prog = random_program(seed, moves)
    ours = analyse_gcode(text).estimated_time_s
    expected = reference_time(prog, Limits(**LIMITS))
    assert ours == pytest.approx(expected, abs=0.006)  # the result is rounded to 0.01 s


def test_planner_is_seamless_across_array_slices() -> None:
    # More moves than one planner slice (32768) and one scan slice (256 KB).
    text, prog = random_program(7, 40000)
    assert len(text) > 1 << 18
    ours = analyse_gcode(text).estimated_time_s
    expected = reference_time(prog, Limits(**LIMITS))
    assert ours == pytest.approx(expected, abs=0.006)  # the result is rounded to 0.01 s


def test_limits_from_dict_reads_machine_settings() -> None:
    lim = limits_from_dict(
        {"max_feedrate": [200, 200, 10, 50], "print_acceleration": 800, "unknown": 1, "jd": None}
    )
    assert lim.max_feedrate == (200.0, 200.0, 10.0, 50.0)
    assert lim.print_acceleration == 800.0
    assert lim.max_jerk == MachineLimits().max_jerk
    with pytest.raises(ValueError, match="four values"):
        limits_from_dict({"max_jerk": [1, 2]})
