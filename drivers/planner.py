"""A motion planner that plans as GRBL 1.1 and Marlin do: trapezoids with bounded look-ahead.

Pure computation, no I/O. Two users:

- The G-code analyser (``microfactory.analysis.gcode``) plans a whole file at once with
  :func:`plan_times`, vectorised over arrays of moves.
- The simulators (``drivers.sim.grbl``, ``drivers.sim.marlin``) run their moves in time
  through :class:`MotionQueue`, one block at a time, with the same block parameters, the same
  junction speeds and the same profiles, so that a simulated job takes the time the analyser
  predicted for it (when the host keeps the planner buffer full).

The firmware's planner holds a ring of ``BLOCK_BUFFER_SIZE`` blocks (16 by default in GRBL
1.1 and Marlin), of which ``BLOCK_BUFFER_SIZE - 1`` are usable: a full ring is told from an
empty one by one free slot. The block that runs is one of them. Every time it replans, the
firmware assumes the last block it holds must end at rest (it cannot know what follows), so
the speed of a block is bounded by the distance in which the blocks after it, up to the end
of the buffer, can bring the machine to a stop. On long moves this never binds; on thousands
of 0.02 mm segments at a low acceleration it is what sets the speed.

The model, per block ``k`` of a program streamed fast enough to keep the buffer full: while
block ``k - 1`` runs, the buffer holds ``k - 1 .. k + B - 2`` (``B`` usable blocks), so the
entry speed of ``k`` is the reverse pass over the ``B - 1`` blocks ``k .. k + B - 2`` ending
at rest, then the forward pass (a block cannot enter faster than the one before it could
accelerate to). ``block_buffer_size=0`` plans over the whole program between synchronising
commands instead, as PrusaSlicer's estimate does.

Per block: the feed capped by each axis' maximum rate, the acceleration capped by each axis'
maximum acceleration, the junction speed from junction deviation (GRBL, Marlin 2) or from
classic jerk (as PrusaSlicer models Marlin), and an accelerate-cruise-decelerate profile.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_BLOCK_BUFFER_SIZE",
    "UNBOUNDED_WINDOW",
    "MachineLimits",
    "MotionQueue",
    "PlanLimits",
    "QueuedBlock",
    "arc_geometry",
    "grbl_arc_segments",
    "limits_from_dict",
    "lookahead_window",
    "marlin_arc_segments",
    "plan_times",
    "profile_time",
]

F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

DEFAULT_BLOCK_BUFFER_SIZE: Final = 16
# What "whole-program look-ahead" means when a program is planned in chunks: a move never
# needs more than a few hundred neighbours to reach its speed, 65,536 is plenty.
UNBOUNDED_WINDOW: Final = 1 << 16
_CHUNK: Final = 1 << 15


# -- limits ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MachineLimits:
    """Motion limits in mm and seconds per axis X, Y, Z, E, as the firmware reports them.

    Marlin: M201 (max_acceleration), M203 (max_feedrate, mm/s), M204 P/R/T, M205 X/Y/Z/E
    (max_jerk), J (junction_deviation), S/T (minimum feed rates). GRBL: $110-$112 (max_feedrate,
    converted to mm/s), $120-$122 (max_acceleration), $11 (junction_deviation), $12
    (arc_tolerance), $30/$31 (spindle_max/spindle_min), $32 (laser_mode).

    These field names are also the keys of a driver's ``motion_limits`` dict.
    """

    max_acceleration: tuple[float, float, float, float] = (9000.0, 9000.0, 500.0, 10000.0)
    max_feedrate: tuple[float, float, float, float] = (500.0, 500.0, 12.0, 120.0)
    max_jerk: tuple[float, float, float, float] = (10.0, 10.0, 0.4, 2.5)
    print_acceleration: float = 1500.0
    retract_acceleration: float = 1500.0
    travel_acceleration: float = 1250.0
    # When set (mm), junction speeds follow junction deviation (Marlin 2 / GRBL), not jerk.
    junction_deviation: float | None = None
    min_extrude_feedrate: float = 0.0
    min_travel_feedrate: float = 0.0
    # The planner ring's size (BLOCK_BUFFER_SIZE); 0 plans over the whole program.
    block_buffer_size: int = DEFAULT_BLOCK_BUFFER_SIZE
    # "marlin" or "grbl": how arcs are split, how fast G0 runs, which syncs empty the planner.
    firmware: str = "marlin"
    # GRBL $12 (mm): arcs become chords within this distance of the true arc.
    arc_tolerance: float = 0.002
    # GRBL $32: M3/M4 S changes on motion lines do not stop the planner.
    laser_mode: bool = False
    spindle_min: float | None = None  # GRBL $31
    spindle_max: float | None = None  # GRBL $30
    linear_advance_k: float | None = None  # Marlin M900 K (not used for timing)

    @classmethod
    def marlin(cls) -> MachineLimits:
        """Return the Prusa/Marlin defaults PrusaSlicer assumes when a file sets nothing."""
        return cls()

    @classmethod
    def grbl(cls) -> MachineLimits:
        """Return stock GRBL 1.1 limits (defaults.h): what `$$` reports on a fresh board."""
        return cls(
            max_acceleration=(10.0, 10.0, 10.0, 10000.0),
            max_feedrate=(500.0 / 60, 500.0 / 60, 500.0 / 60, 120.0),
            max_jerk=(10.0, 10.0, 0.4, 2.5),
            # GRBL has no per-move acceleration: only the axis limits above apply.
            print_acceleration=1.0e6,
            retract_acceleration=1.0e6,
            travel_acceleration=1.0e6,
            junction_deviation=0.01,
            firmware="grbl",
            arc_tolerance=0.002,
        )

    def as_dict(self) -> dict[str, Any]:
        """Return plain JSON-ready data (tuples as lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


_INT_FIELDS: Final = frozenset({"block_buffer_size"})
# Other names drivers use for the same thing (the marlin driver's M115/ADVANCED_OK reading).
_ALIASES: Final = {"planner_blocks": "block_buffer_size"}
_BOOL_FIELDS: Final = frozenset({"laser_mode"})
_STR_FIELDS: Final = frozenset({"firmware"})


def limits_from_dict(values: Mapping[str, Any], base: MachineLimits | None = None) -> MachineLimits:
    """Build MachineLimits from stored settings (e.g. a machine's motion_limits), ignoring
    unknown keys and None; per-axis values are sequences of four numbers (X, Y, Z, E).

    Without ``base``, a dict that says ``"firmware": "grbl"`` starts from the GRBL defaults.
    """
    known = {f.name for f in fields(MachineLimits)}
    clean: dict[str, Any] = {}
    for key, value in values.items():
        key = _ALIASES.get(key, key)
        if key not in known or value is None:
            continue
        if key in _STR_FIELDS:
            if value not in ("marlin", "grbl"):
                raise ValueError(f"{key} must be 'marlin' or 'grbl', got {value!r}")
            clean[key] = str(value)
        elif key in _BOOL_FIELDS:
            clean[key] = bool(value)
        elif key in _INT_FIELDS:
            count = int(value)
            if count < 0 or count == 1 or count > 4096:
                raise ValueError(f"{key} must be 0 (unbounded) or 2..4096, got {value!r}")
            clean[key] = count
        elif isinstance(value, list | tuple):
            if len(value) != 4:
                raise ValueError(f"{key} needs four values (X, Y, Z, E), got {len(value)}")
            numbers = tuple(float(v) for v in value)
            # A jerk of 0 is allowed (an axis the firmware does not report); rates are not.
            low_ok = key == "max_jerk"
            if not all(math.isfinite(v) and (v >= 0 if low_ok else v > 0) for v in numbers):
                raise ValueError(f"{key} needs positive finite numbers, got {list(value)}")
            clean[key] = numbers
        else:
            number = float(value)
            if not math.isfinite(number) or number < 0:
                raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")
            clean[key] = number
    if base is None:
        base = MachineLimits.grbl() if clean.get("firmware") == "grbl" else MachineLimits()
    return replace(base, **clean)


def lookahead_window(limits: MachineLimits) -> int:
    """Return how many blocks after a junction bound its speed (``B - 1`` usable blocks)."""
    size = limits.block_buffer_size
    return UNBOUNDED_WINDOW if size <= 0 else max(1, size - 2)


def grbl_arc_segments(angular_travel: float, radius: float, tolerance: float) -> int:
    """Return how many chords GRBL's mc_arc cuts an arc into ($12 arc tolerance)."""
    if radius <= 0 or tolerance <= 0:
        return 1
    tol = min(tolerance, radius)
    return max(1, int(abs(0.5 * angular_travel * radius) / math.sqrt(tol * (2 * radius - tol))))


#: Marlin 2's arcs (`plan_arc`): segments of feed / ARC_SEGMENTS_PER_SEC, kept within
#: MIN_ARC_SEGMENT_MM and MAX_ARC_SEGMENT_MM (Marlin 1 cut every arc into MM_PER_ARC_SEGMENT
#: = 1 mm chords: the upper bound). The analyser splits arcs the same way.
MARLIN_ARC_SEGMENTS_PER_S: Final = 50.0
MARLIN_MIN_ARC_SEGMENT_MM: Final = 0.1
MARLIN_MAX_ARC_SEGMENT_MM: Final = 1.0


def marlin_arc_segments(angular_travel: float, radius: float, feed_mm_s: float) -> int:
    """Return how many segments Marlin cuts an arc into at a feed rate (mm/s)."""
    seg = min(
        max(feed_mm_s / MARLIN_ARC_SEGMENTS_PER_S, MARLIN_MIN_ARC_SEGMENT_MM),
        MARLIN_MAX_ARC_SEGMENT_MM,
    )
    return max(1, int(abs(angular_travel) * radius / seg))


def arc_geometry(
    start: tuple[float, float],
    end: tuple[float, float],
    offset: tuple[float, float] | None,
    radius: float | None,
    clockwise: bool,
) -> tuple[float, float, float, float]:
    """Return an XY arc's centre, radius and signed angular travel (radians).

    `offset` is I/J (the centre relative to the start); else `radius` is R (> 0 the short
    arc, < 0 the long one). Start = end with I/J is a full circle. A degenerate arc (no
    radius) has an angular travel of 0.
    """
    sx, sy = start
    ex, ey = end
    if offset is None:
        r = radius or 0.0
        dx, dy = ex - sx, ey - sy
        chord = math.hypot(dx, dy)
        if chord == 0 or r == 0:
            return sx, sy, 0.0, 0.0
        h2 = r * r - chord * chord / 4
        h = math.sqrt(h2) if h2 > 0 else 0.0
        sign = (-1.0 if clockwise else 1.0) * (1.0 if r > 0 else -1.0)
        cx = sx + dx / 2 - sign * h * dy / chord
        cy = sy + dy / 2 + sign * h * dx / chord
    else:
        cx, cy = sx + offset[0], sy + offset[1]
    r0x, r0y = sx - cx, sy - cy
    r1x, r1y = ex - cx, ey - cy
    rad = math.hypot(r0x, r0y)
    if rad == 0:
        return cx, cy, 0.0, 0.0
    angle = math.atan2(r0x * r1y - r0y * r1x, r0x * r1x + r0y * r1y)
    if abs(ex - sx) < 1e-9 and abs(ey - sy) < 1e-9:
        angle = -2 * math.pi if clockwise else 2 * math.pi  # a full circle
    elif clockwise and angle >= -5e-7:
        angle -= 2 * math.pi
    elif not clockwise and angle <= 5e-7:
        angle += 2 * math.pi
    return cx, cy, rad, angle


@dataclass(slots=True)
class PlanLimits:
    """Limits as arrays with one column for the whole program, or one column per move."""

    axis_acc: F64  # (4, k) M201
    axis_feed: F64  # (4, k) M203
    axis_jerk: F64  # (4, k) M205 X Y Z E
    print_acc: F64  # (k,) M204 P
    retract_acc: F64  # (k,) M204 R
    travel_acc: F64  # (k,) M204 T
    jd: F64  # (k,) M205 J, NaN for classic jerk
    min_extrude: F64  # (k,) M205 S
    min_travel: F64  # (k,) M205 T
    grbl: bool = False  # junction acceleration along the junction vector, as GRBL computes it

    @classmethod
    def constant(cls, lim: MachineLimits) -> PlanLimits:
        """Return the limits of a whole program that never changes them."""

        def one(v: float) -> F64:
            return np.array([v], dtype=np.float64)

        def axes(v: tuple[float, float, float, float]) -> F64:
            return np.array(v, dtype=np.float64).reshape(4, 1)

        jd = math.nan if lim.junction_deviation is None else lim.junction_deviation
        return cls(
            axes(lim.max_acceleration),
            axes(lim.max_feedrate),
            axes(lim.max_jerk),
            one(lim.print_acceleration),
            one(lim.retract_acceleration),
            one(lim.travel_acceleration),
            one(jd),
            one(lim.min_extrude_feedrate),
            one(lim.min_travel_feedrate),
            grbl=lim.firmware == "grbl",
        )

    def slice(self, a: int, b: int) -> PlanLimits:
        """Return the limits of moves a..b-1."""
        if self.print_acc.size == 1:
            return self
        return PlanLimits(
            self.axis_acc[:, a:b],
            self.axis_feed[:, a:b],
            self.axis_jerk[:, a:b],
            self.print_acc[a:b],
            self.retract_acc[a:b],
            self.travel_acc[a:b],
            self.jd[a:b],
            self.min_extrude[a:b],
            self.min_travel[a:b],
            self.grbl,
        )

    def uses_jd(self) -> bool:
        """Tell whether any move plans its junctions by junction deviation."""
        return bool(np.any(~np.isnan(self.jd)))


# -- per block -------------------------------------------------------------------------------


def block_params(d: F64, feed: F64, lim: PlanLimits) -> tuple[F64, F64, F64, F64, F64, F64]:
    """Return distance, acceleration, requested and cruise speed, safe speed, axis speeds.

    The feed capped by each axis' maximum feed, the acceleration capped by each axis' maximum
    acceleration, and the "safe" speed at which the move could start or stop without
    exceeding any axis' jerk (zero under junction deviation).
    """
    dx, dy, dz, de = d
    xyz = np.sqrt(dx * dx + dy * dy + dz * dz)
    has_xyz = xyz > 0.0
    dist = np.where(has_xyz, xyz, np.abs(de))
    unit = d / dist
    share = np.abs(unit)
    f = np.where(de == 0.0, np.maximum(feed, lim.min_travel), np.maximum(feed, lim.min_extrude))
    cruise = np.minimum(f, (lim.axis_feed / share).min(axis=0))  # x/0 = inf: axis idle
    axis_v = unit * cruise
    travel = (de <= 0) & has_xyz | ((de > 0) & (dx == 0) & (dy == 0) & (dz != 0))
    acc = np.where(travel, lim.travel_acc, np.where(has_xyz, lim.print_acc, lim.retract_acc))
    acc = np.maximum(np.minimum(acc, (lim.axis_acc / share).min(axis=0)), 1e-9)
    jerk = lim.axis_jerk
    over = np.where(np.abs(axis_v) > jerk, jerk, np.inf).min(axis=0)
    safe = np.minimum(cruise, over)
    if lim.uses_jd():
        safe = np.where(np.isnan(lim.jd), safe, 0.0)  # junction deviation starts from rest
    return dist, acc, f, cruise, safe, axis_v


def junction_jerk(f: F64, cruise: F64, safe: F64, axis_v: F64, jerk: F64) -> F64:
    """Return the classic-jerk junction speed between each move and the one before it.

    Inputs cover moves a-1..b-1 and the result moves a..b-1. As PrusaSlicer models Marlin:
    the smaller nominal speed, scaled down until no axis changes speed by more than its
    jerk; or the safe speed when both sides could stop instantly anyway.
    """
    pf, cr = f[:-1], cruise[1:]
    larger = pf > cr
    vmax = np.where(larger, cr, pf)
    ve = axis_v[:, :-1] * np.where(larger, cr / pf, 1.0)
    vn = axis_v[:, 1:]
    # Coasting (same direction): the speed difference; reversal or start: the larger speed.
    change = np.where(ve * vn > 0, np.abs(ve - vn), np.maximum(np.abs(ve), np.abs(vn)))
    factor = np.minimum((jerk / change).min(axis=0), 1.0)
    vmax = vmax * factor
    thresh = vmax * 0.99
    vmax = np.where((safe[:-1] > thresh) & (safe[1:] > thresh), safe[1:], vmax)
    return np.where(pf > 1e-4, vmax, safe[1:])


def junction_deviation(d: F64, cruise: F64, acc: F64, jd: F64, axis_acc: F64, grbl: bool) -> F64:
    """Return junction speeds under junction deviation (GRBL, Marlin 2), moves a..b-1.

    GRBL takes the acceleration along the junction vector (the change of direction), capped
    by each axis' maximum; Marlin (as modelled here) the acceleration of the move itself.
    """
    xyz = np.sqrt(np.sum(d[:3] * d[:3], axis=0))
    u = d[:3] / xyz
    cos = -np.sum(u[:, :-1] * u[:, 1:], axis=0)
    cos = np.clip(np.nan_to_num(cos, nan=1.0), -1.0, 1.0)
    sin_half = np.sqrt(0.5 * (1.0 - cos))
    if grbl:
        ju = u[:, 1:] - u[:, :-1]
        norm = np.sqrt(np.sum(ju * ju, axis=0))
        share = np.abs(ju) / np.where(norm > 0, norm, 1.0)
        jacc = (axis_acc[:3] / share).min(axis=0)
        jacc = np.where(np.isfinite(jacc), jacc, acc[1:])
    else:
        jacc = acc[1:]
    v2 = jacc * jd * sin_half / (1.0 - sin_half)
    v = np.sqrt(np.where(cos < -0.999999, np.inf, np.where(cos > 0.999999, 0.0, v2)))
    v = np.where((xyz[:-1] > 0) & (xyz[1:] > 0), v, 0.0)
    return np.minimum(v, np.minimum(cruise[:-1], cruise[1:]))


# -- the whole-program planner ---------------------------------------------------------------


@dataclass(slots=True)
class Blocks:
    """Planner blocks as arrays: what the passes need of each move."""

    dist: F64
    acc: F64
    cruise: F64
    safe: F64
    junction: F64  # max entry speed (mm/s) from the move before
    first: Bools  # starts from rest (after a sync)
    last: Bools  # ends at rest (before a sync)

    @property
    def size(self) -> int:
        """Return the number of blocks."""
        return int(self.dist.size)

    def tail(self, start: int) -> Blocks:
        """Return blocks start.. (copies)."""
        return Blocks(*(np.array(getattr(self, k)[start:]) for k in _BLOCK_KEYS))

    @staticmethod
    def concat(a: Blocks, b: Blocks) -> Blocks:
        """Return a followed by b."""
        return Blocks(*(np.concatenate([getattr(a, k), getattr(b, k)]) for k in _BLOCK_KEYS))


_BLOCK_KEYS: Final = ("dist", "acc", "cruise", "safe", "junction", "first", "last")


def make_blocks(
    d: F64, feed: F64, first: Bools, last: Bools, lim: PlanLimits, has_prev: bool = False
) -> Blocks:
    """Return the blocks of moves (4, n deltas in mm, feed in mm/s).

    With ``has_prev``, column 0 of ``d``, ``feed`` and ``lim`` is the move before these (from
    an earlier part of the program): it only sets the junction speed of the first move, and
    ``first``/``last`` cover the other columns.
    """
    n = d.shape[1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _make_blocks(d, np.maximum(feed, 1e-3), first, last, lim, has_prev, n)


def _make_blocks(
    d: F64, feed: F64, first: Bools, last: Bools, lim: PlanLimits, has_prev: bool, n: int
) -> Blocks:
    dist, acc, f, cruise, safe = (np.empty(n) for _ in range(5))
    axis_v = np.empty((4, n))
    for a in range(0, n, _CHUNK):
        b = min(n, a + _CHUNK)
        dist[a:b], acc[a:b], f[a:b], cruise[a:b], safe[a:b], axis_v[:, a:b] = block_params(
            d[:, a:b], feed[a:b], lim.slice(a, b)
        )
    junction = safe.copy()
    use_jd = lim.uses_jd()
    for a in range(1, n, _CHUNK):
        b = min(n, a + _CHUNK)
        part = lim.slice(a, b)
        w = slice(a - 1, b)
        speed = junction_jerk(f[w], cruise[w], safe[w], axis_v[:, w], part.axis_jerk)
        if use_jd:
            jd_speed = junction_deviation(
                d[:, w], cruise[w], acc[w], part.jd, part.axis_acc, lim.grbl
            )
            speed = np.where(np.isnan(part.jd), speed, jd_speed)
        junction[a:b] = speed
    k = 1 if has_prev else 0
    out = Blocks(dist[k:], acc[k:], cruise[k:], safe[k:], junction[k:], first, last)
    out.junction[first] = out.safe[first]
    return out


def plan_blocks(
    blk: Blocks, window: int | None, entry2_fixed: float | None = None
) -> tuple[F64, F64]:
    """Return (entry speed squared, time) of each block.

    ``window`` is the look-ahead in blocks (see :func:`lookahead_window`), None for the whole
    program between syncs. ``entry2_fixed`` pins the entry speed squared of block 0 (planning
    that continues from an earlier part of the program).
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _plan_blocks(blk, window, entry2_fixed)


def _plan_blocks(blk: Blocks, window: int | None, entry2_fixed: float | None) -> tuple[F64, F64]:
    n = blk.size
    if n == 0:
        return np.zeros(0), np.zeros(0)
    dist, acc, cruise, safe, first, last = (
        blk.dist,
        blk.acc,
        blk.cruise,
        blk.safe,
        blk.first,
        blk.last,
    )
    two_ad = 2.0 * acc * dist
    allow2 = safe * safe + two_ad
    nominal = cruise * cruise <= allow2
    # Reverse pass: each move must be able to slow down to the next move's entry speed.
    top = blk.junction * blk.junction
    if entry2_fixed is not None:
        top[0] = min(top[0], entry2_fixed)
    c = np.where(nominal, np.inf, two_ad)
    top[last] = np.minimum(top[last], allow2[last])
    c[last] = np.inf
    if window is None:
        entry2 = scan_min_plus(top, c, reverse=True)
    else:
        entry2 = window_min_plus(top, c, safe * safe, window)
    # Forward pass: a move cannot enter faster than the previous one could accelerate to.
    c = np.empty(n)
    c[0] = np.inf
    c[1:] = np.where(nominal[:-1], np.inf, two_ad[:-1])
    c[first] = np.inf
    entry2 = scan_min_plus(entry2, c, reverse=False)

    exit2 = np.empty(n)
    exit2[:-1] = entry2[1:]
    exit2[-1] = safe[-1] ** 2
    exit2[last] = safe[last] ** 2
    times = np.empty(n)
    for a in range(0, n, _CHUNK):
        b = min(n, a + _CHUNK)
        times[a:b] = trapezoid_times(dist[a:b], acc[a:b], entry2[a:b], cruise[a:b], exit2[a:b])
    return entry2, times


def plan_times(
    d: F64, feed: F64, first: Bools, last: Bools, lim: PlanLimits, window: int | None
) -> F64:
    """Return the time of each move of a whole program (see make_blocks and plan_blocks)."""
    if d.shape[1] == 0:
        return np.zeros(0)
    return plan_blocks(make_blocks(d, feed, first, last, lim), window)[1]


def trapezoid_times(dist: F64, acc: F64, entry2: F64, cruise: F64, exit2: F64) -> F64:
    """Return the time of each accelerate-cruise-decelerate profile."""
    cruise2 = cruise * cruise
    inv2a = 0.5 / acc
    acc_d = np.maximum(0.0, (cruise2 - entry2) * inv2a)
    dec_d = np.maximum(0.0, (cruise2 - exit2) * inv2a)
    cru_d = dist - acc_d - dec_d
    short = cru_d < 0.0
    peak2 = cruise2
    if short.any():
        # Never reaches cruise: accelerate until the point where braking must start.
        meet = np.clip((2.0 * acc * dist - entry2 + exit2) * 0.5 * inv2a, 0.0, dist)
        acc_d = np.where(short, meet, acc_d)
        cru_d = np.where(short, 0.0, cru_d)
        peak2 = np.where(short, entry2 + 2.0 * acc * acc_d, cruise2)
    peak = np.sqrt(np.maximum(peak2, 0.0))
    dec_d = dist - acc_d - cru_d
    t_acc = (np.sqrt(np.maximum(entry2 + 2.0 * acc * acc_d, 0.0)) - np.sqrt(entry2)) / acc
    t_cru = np.where(peak > 0, cru_d / peak, 0.0)
    t_dec = (peak - np.sqrt(np.maximum(peak2 - 2.0 * acc * dec_d, 0.0))) / acc
    return t_acc + t_cru + t_dec


def scan_min_plus(a: F64, c: F64, reverse: bool) -> F64:
    """Solve x[i] = min(a[i], x[i±1] + c[i]) for all i at once (Hillis-Steele doubling).

    c[i] = inf cuts the chain at i, and every chain must end at such a cut. Each step
    composes maps of the form x -> min(A, x + C), which are closed under composition, so
    the loop runs log2(longest chain) times over the still-open chains only.
    """
    a = a.copy()
    c = c.copy()
    n = a.size
    step = 1
    live = np.flatnonzero(np.isfinite(c))
    while step < n and live.size:
        nxt = np.minimum(live + step, n - 1) if reverse else np.maximum(live - step, 0)
        a[live] = np.minimum(a[live], a[nxt] + c[live])
        c[live] = c[live] + c[nxt]
        live = live[np.isfinite(c[live])]
        step *= 2
    return a


def _shift(a: F64, k: int, fill: float) -> F64:
    """Return a[i + k] for each i, ``fill`` past the end."""
    out = np.full(a.size, fill)
    if k < a.size:
        out[: a.size - k] = a[k:]
    return out


def window_min_plus(a: F64, c: F64, end: F64, window: int) -> F64:
    """Reverse pass with bounded look-ahead: x[i] over the moves i .. i + window - 1 only.

    For each i, compose the maps x -> min(a[j], x + c[j]) for j = i .. i + window - 1 (the
    blocks the buffer holds after the one running) and apply them to end[i + window - 1], the
    speed squared at which the last buffered block must be able to stop. Sliding-window
    composition by binary powers: log2(window) passes over the arrays.
    """
    # Past the end a shifted map is the identity (A = inf, C = 0): composing with it leaves
    # an entry as it is, so each step updates only the first n - shift entries, in place.
    # (c >= 0, so adding C = 0 never turns a -0.0 into a 0.0.)
    n = a.size
    res_a = np.full(n, np.inf)
    res_c = np.zeros(n)
    pow_a, pow_c = a.copy(), c.copy()
    offset, step, left = 0, 1, window
    while left:
        if left & 1:
            if offset < n:
                m = n - offset
                np.minimum(res_a[:m], pow_a[offset:] + res_c[:m], out=res_a[:m])
                res_c[:m] += pow_c[offset:]
            offset += step
        left >>= 1
        if left:
            if step < n:
                m = n - step
                np.minimum(pow_a[:m], pow_a[step:] + pow_c[:m], out=pow_a[:m])
                pow_c[:m] = pow_c[:m] + pow_c[step:]
            step *= 2
    return np.minimum(res_a, _shift(end, window - 1, 0.0) + res_c)


# -- in time: the simulators' planner ----------------------------------------------------------


def profile_time(dist: float, acc: float, v0: float, cruise: float, v1: float) -> float:
    """Return the time of one accelerate-cruise-decelerate profile (speeds in mm/s)."""
    arr = trapezoid_times(
        np.array([dist]), np.array([acc]), np.array([v0 * v0]), np.array([cruise]),
        np.array([v1 * v1]),
    )  # fmt: skip
    return float(arr[0])


@dataclass(slots=True)
class QueuedBlock:
    """A block in the simulators' planner: its parameters and how far it has run."""

    length: float  # mm
    acc: float  # mm/s^2
    cruise: float  # mm/s
    safe: float  # mm/s, the speed it may start or stop at without a junction
    max_entry2: float  # junction limit, squared
    nominal: bool  # can always reach cruise from rest within its length
    unit: tuple[float, float, float, float]
    feed: float  # requested mm/s
    axis_v: tuple[float, float, float, float]
    remaining: float = 0.0  # mm still to run
    speed: float = 0.0  # mm/s now (while it runs)
    tag: Any = None  # the simulator's own data (target, line number...)


class MotionQueue:
    """The firmware's block ring, run in (machine) time: push blocks, advance the clock.

    The block at the head runs; its exit speed is replanned on every step from the blocks
    behind it, with the last one ending at rest, as the firmware replans when a block is
    added. ``capacity`` is the number of usable blocks (``block_buffer_size - 1``).
    """

    def __init__(self, limits: MachineLimits, capacity: int | None = None) -> None:
        self.limits = limits
        self.plan_limits = PlanLimits.constant(limits)
        size = limits.block_buffer_size or DEFAULT_BLOCK_BUFFER_SIZE
        self.capacity = capacity if capacity is not None else max(1, size - 1)
        self.blocks: deque[QueuedBlock] = deque()
        self._prev: QueuedBlock | None = None  # the last block planned (for its junction)
        self._prev_d: tuple[float, float, float, float] | None = None
        self.clock = 0.0  # machine seconds run so far
        self.leftover = 0.0

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def full(self) -> bool:
        """Tell whether the ring has no free usable block."""
        return len(self.blocks) >= self.capacity

    def set_limits(self, limits: MachineLimits) -> None:
        """Use new limits for the blocks planned from now on (a setting changed)."""
        self.limits = limits
        self.plan_limits = PlanLimits.constant(limits)

    def clear(self) -> None:
        """Drop every block (reset, alarm): the machine stops at once."""
        self.blocks.clear()
        self._prev = None
        self._prev_d = None

    def sync_point(self) -> None:
        """Forget the previous direction: the next block starts from rest."""
        self._prev = None
        self._prev_d = None

    def make_block(
        self, delta: tuple[float, float, float, float], feed_mm_s: float, tag: Any = None
    ) -> QueuedBlock | None:
        """Return the block for a move (None for a zero-length move, which GRBL drops)."""
        if not any(delta):
            return None
        lim = self.plan_limits
        if self._prev_d is not None and self.blocks:
            d = np.array([self._prev_d, delta], dtype=np.float64).T
            feed = np.array([max(self._prev.feed if self._prev else feed_mm_s, 1e-3), feed_mm_s])
        else:
            d = np.array([delta], dtype=np.float64).T
            feed = np.array([feed_mm_s])
        feed = np.maximum(feed, 1e-3)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            dist, acc, f, cruise, safe, axis_v = block_params(d, feed, lim)
            if d.shape[1] == 2:
                junction = junction_jerk(f, cruise, safe, axis_v, lim.axis_jerk)
                if lim.uses_jd():
                    junction = junction_deviation(d, cruise, acc, lim.jd, lim.axis_acc, lim.grbl)
                max_entry = float(junction[0])
            else:
                max_entry = float(safe[-1])  # the planner is empty: start from rest
        length, a, cr, sf = float(dist[-1]), float(acc[-1]), float(cruise[-1]), float(safe[-1])
        vx, vy, vz, ve = (float(v) for v in axis_v[:, -1])
        unit = tuple(float(x) / length for x in delta)
        return QueuedBlock(
            length=length,
            acc=a,
            cruise=cr,
            safe=sf,
            max_entry2=max_entry * max_entry,
            nominal=cr * cr <= sf * sf + 2 * a * length,
            unit=(unit[0], unit[1], unit[2], unit[3]),
            feed=float(f[-1]),
            axis_v=(vx, vy, vz, ve),
            remaining=length,
            tag=tag,
        )

    def push(self, block: QueuedBlock, delta: tuple[float, float, float, float]) -> None:
        """Append a block made by :meth:`make_block` (the caller waits while ``full``)."""
        if not self.blocks:
            block.max_entry2 = block.safe * block.safe
            block.speed = block.safe
        self.blocks.append(block)
        self._prev = block
        self._prev_d = delta

    def _head_exit(self, override: float) -> float:
        """Return the speed the head block may leave at, given the blocks behind it."""
        blocks = self.blocks
        if len(blocks) < 2:
            return blocks[0].safe * override if blocks else 0.0
        last = blocks[-1]
        x = min(last.max_entry2, last.safe * last.safe + 2 * last.acc * last.length)
        for i in range(len(blocks) - 2, 0, -1):
            b = blocks[i]
            x = b.max_entry2 if b.nominal else min(b.max_entry2, x + 2 * b.acc * b.length)
        return math.sqrt(max(x, 0.0)) * override

    def time_to_next(self, override: float = 1.0) -> float:
        """Return the machine time until the head block ends at the current plan."""
        if not self.blocks:
            return math.inf
        head = self.blocks[0]
        v0, v1, top = self._head_speeds(head, override)
        return profile_time(head.remaining, head.acc, v0, top, v1)

    def _head_speeds(self, head: QueuedBlock, override: float) -> tuple[float, float, float]:
        top = head.cruise * override
        v0 = min(head.speed, top) if head.speed > top else head.speed
        v1 = min(self._head_exit(override), math.sqrt(v0 * v0 + 2 * head.acc * head.remaining))
        v1 = min(v1, top)
        return v0, v1, top

    def advance(
        self, dt: float, override: float = 1.0, max_blocks: int | None = None
    ) -> list[QueuedBlock]:
        """Run ``dt`` machine seconds; return the blocks that finished, in order.

        With ``max_blocks``, stop after that many blocks finish and keep the rest of ``dt`` in
        :attr:`leftover` (a simulator that checks each block as it starts).
        """
        done: list[QueuedBlock] = []
        self.leftover = 0.0
        while dt > 0 and self.blocks:
            if max_blocks is not None and len(done) >= max_blocks:
                self.leftover = dt
                break
            head = self.blocks[0]
            v0, v1, top = self._head_speeds(head, override)
            total = profile_time(head.remaining, head.acc, v0, top, v1)
            if total <= dt:
                dt -= total
                self.clock += total
                self.blocks.popleft()
                head.remaining = 0.0
                head.speed = v1
                done.append(head)
                if self.blocks:
                    self.blocks[0].speed = v1
                continue
            covered, speed = _advance_profile(head.remaining, head.acc, v0, top, v1, dt)
            head.remaining = max(head.remaining - covered, 1e-12)
            head.speed = speed
            self.clock += dt
            dt = 0.0
        if not self.blocks:
            self._prev = None
            self._prev_d = None
        return done

    def stop_now(self) -> None:
        """The machine is at rest mid-block (a feed hold): the head restarts from zero."""
        if self.blocks:
            self.blocks[0].speed = 0.0


def _advance_profile(
    dist: float, acc: float, v0: float, top: float, v1: float, dt: float
) -> tuple[float, float]:
    """Return (distance covered, speed) ``dt`` seconds into a profile that lasts longer."""
    acc_d = max(0.0, (top * top - v0 * v0) / (2 * acc))
    dec_d = max(0.0, (top * top - v1 * v1) / (2 * acc))
    if acc_d + dec_d > dist:
        acc_d = min(max((2 * acc * dist - v0 * v0 + v1 * v1) / (4 * acc), 0.0), dist)
        peak = math.sqrt(max(v0 * v0 + 2 * acc * acc_d, 0.0))
        cru_d = 0.0
    else:
        peak = top
        cru_d = dist - acc_d - dec_d
    t1 = (peak - v0) / acc
    if dt <= t1:
        return v0 * dt + 0.5 * acc * dt * dt, v0 + acc * dt
    t2 = cru_d / peak if peak > 0 else 0.0
    if dt <= t1 + t2:
        return acc_d + peak * (dt - t1), peak
    t = dt - t1 - t2
    v = max(peak - acc * t, v1)
    return min(acc_d + cru_d + peak * t - 0.5 * acc * t * t, dist), v
