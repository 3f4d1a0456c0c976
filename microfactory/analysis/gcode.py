"""Analyse G-code files: process, print-time estimate, filament, bounds, metadata and risks.

How it stays fast (measured on vase.gcode, 6.3 MB, 224k lines; see docs/bench-analysis.md):

- One vectorised pass over the bytes finds the plain ``G0``/``G1``/``G92`` lines (83 to 97 %
  of the lines in the PrusaSlicer samples) and parses their numbers eight bytes at a time
  (SWAR arithmetic on uint64 words). Every other line goes through a small Python
  interpreter, except the slicer's per-feature tags, which are skipped.
- Positions come from cumulative sums over the moves, in the order of the file.
- The time estimate is a Marlin-style planner (classic jerk as PrusaSlicer models it, or
  junction deviation), but its look-ahead passes are min-plus scans over whole arrays instead
  of a loop over a 64-block queue, so it plans 200k moves in a few tens of milliseconds.

The estimate mimics PrusaSlicer's GCodeProcessor (which models Marlin/Prusa firmware) closely
enough to land within 0.3 % of its embedded estimate on the sample prints.
"""

from __future__ import annotations

import asyncio
import ctypes
import math
import multiprocessing
import os
import re
import shlex
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Final

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from drivers.planner import (
    Blocks,
    MachineLimits,
    PlanLimits,
    grbl_arc_segments,
    limits_from_dict,
    lookahead_window,
    make_blocks,
    plan_blocks,
)
from microfactory.workers import die_with_parent

__all__ = [
    "AnalysisError",
    "BoundingBox",
    "FirmwareCommand",
    "GcodeAnalysis",
    "MachineLimits",
    "Thumbnail",
    "analyse_gcode",
    "analyse_gcode_async",
    "limits_from_dict",
    "shutdown_analysis_pool",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
U8 = npt.NDArray[np.uint8]
Bools = npt.NDArray[np.bool_]

INCH: Final = 25.4
# Marlin's feed rate before any F word (feedrate_mm_s = 1500 mm/min).
DEFAULT_FEED_MM_S: Final = 25.0
# A rapid (G0) on GRBL runs at the axes' maximum rate; any huge request gets clamped to it.
RAPID_MM_S: Final = 1.0e9
DEFAULT_FILAMENT_DIAMETER_MM: Final = 1.75
DEFAULT_FILAMENT_DENSITY_G_CM3: Final = 1.24  # PLA


class AnalysisError(Exception):
    """The file is not something we can analyse; the message says why."""


# -- public results --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BoundingBox:
    """Axis-aligned bounds in mm."""

    min_x: float
    min_y: float
    min_z: float
    max_x: float
    max_y: float
    max_z: float

    @property
    def size(self) -> tuple[float, float, float]:
        """Return the extent along X, Y and Z."""
        return (self.max_x - self.min_x, self.max_y - self.min_y, self.max_z - self.min_z)


@dataclass(frozen=True, slots=True)
class FirmwareCommand:
    """A command that changes the controller's settings or firmware, found at a line."""

    line: int  # 1-based
    command: str
    reason: str
    persistent: bool  # survives a power cycle (EEPROM write, reflash)


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """A preview image embedded by the slicer."""

    width: int
    height: int
    png_base64: str


@dataclass(slots=True)
class GcodeAnalysis:
    """What a G-code file will do, as far as reading it can tell."""

    process: str  # "fdm", "cnc", "laser" or "unknown"
    line_count: int
    size_bytes: int
    units: str  # "mm", "inch" or "mixed"
    estimated_time_s: float
    slicer_estimated_time_s: float | None
    filament_mm: float
    filament_g: float
    slicer_filament_mm: float | None
    slicer_filament_g: float | None
    bbox_mm: BoundingBox | None
    layers: int
    max_hotend_c: float | None
    max_bed_c: float | None
    firmware_commands: list[FirmwareCommand]
    slicer: str | None
    slicer_version: str | None
    metadata: dict[str, str]
    thumbnails: list[Thumbnail]
    move_count: int
    extrude_distance_mm: float
    travel_distance_mm: float
    max_spindle_s: float | None  # spindle speed or laser power, as written
    tool_changes: int
    # Commands whose duration cannot be known from the file (heat-and-wait, pauses, probing).
    untimed_commands: dict[str, int]
    limits_source: str  # "file", "machine_limits" or "defaults"
    notes: list[str]
    slicer_config: dict[str, str] = field(repr=False, default_factory=dict)
    # Planned motion time (s) done when 0, 1, ..., 100 % of the lines have run: a live ETA
    # follows the plan through slow and fast parts of the file (101 values, or empty).
    time_profile: list[float] = field(default_factory=list)
    # For microfactory.analysis.commands (what may reach a machine): every command word with
    # its count and first line, lines that are not G-code, and the longest command line.
    commands: dict[str, int] = field(default_factory=dict)
    command_lines: dict[str, int] = field(default_factory=dict)
    unparsed_lines: int = 0
    unparsed_examples: list[tuple[int, str]] = field(default_factory=list)
    longest_line: tuple[int, int, str] | None = None  # (line, length, text) after comments
    # Klipper's extended commands and macros (`NAME KEY=VALUE ...`): counts and first lines,
    # apart from the G-code words above (only a Klipper printer runs them).
    extended_commands: dict[str, int] = field(default_factory=dict)
    extended_lines: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return plain JSON-ready data."""
        return asdict(self)


# -- command tables ----------------------------------------------------------------------------

# code*10 (G28.1 -> 281) -> (reason, persistent)
_FIRMWARE_M: Final[dict[int, tuple[str, bool]]] = {
    5000: ("M500 saves settings to EEPROM", True),
    5020: ("M502 resets settings to factory defaults", True),
    9970: ("M997 starts a firmware update", True),
    3030: ("M303 runs PID autotune (heaters on, new PID values)", False),
    920: ("M92 changes steps per unit", False),
    3010: ("M301 changes hotend PID values", False),
    3040: ("M304 changes bed PID values", False),
    2060: ("M206 changes home offsets", False),
    4280: ("M428 sets home offsets from the current position", False),
    8510: ("M851 changes the probe offset", False),
    6650: ("M665 changes delta geometry", False),
    6660: ("M666 changes endstop adjustments", False),
    9070: ("M907 changes motor currents", False),
}
_FIRMWARE_G: Final[dict[int, tuple[str, bool]]] = {
    281: ("G28.1 stores the G28 position in EEPROM (GRBL)", True),
    301: ("G30.1 stores the G30 position in EEPROM (GRBL)", True),
}
_UNTIMED_M: Final[dict[int, str]] = {
    1090: "M109",
    1900: "M190",
    1910: "M191",
    0: "M0",
    10: "M1",
    6000: "M600",
    60: "M6",
    1160: "M116",
}
_UNTIMED_G: Final[dict[int, str]] = {290: "G29", 380: "G38", 382: "G38.2", 383: "G38.3"}

_WORD_RE: Final = re.compile(r"([A-Z*])[ \t]*([-+]?(?:\d+\.?\d*|\.\d+))?")
_PAREN_RE: Final = re.compile(r"\([^)]*\)?")
_GRBL_SETTING_RE: Final = re.compile(r"^\$(\d+|N\d*|RST|I)=(.*)$")
_DURATION_RE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")
_GENERATED_RE: Final = re.compile(r"generated by\s+(\S+)\s+(\S+)", re.IGNORECASE)
_CURA_RE: Final = re.compile(r"Generated with\s+(\S+)\s+(\S+)")
_THUMB_RE: Final = re.compile(r"^thumbnail(?:_(\w+))?\s+begin\s+(\d+)x(\d+)\s+(\d+)")
# Commands whose arguments are free text (M486 A<name> labels an object, PrusaSlicer writes it).
_M_STRING_ARGS: Final = frozenset({"M23", "M28", "M30", "M32", "M117", "M118", "M486", "M928"})
# Klipper's extended G-code (klippy/gcode.py): a name of letters, digits and underscores that
# is not a letter and a number, then KEY=VALUE parameters (values may be quoted).
_EXTENDED_RE: Final = re.compile(r"(?:N\d+\s*)?([A-Z_][A-Z0-9_]+)(?:\s+(.*))?")
_TRADITIONAL_RE: Final = re.compile(r"[A-Z][-+]?\d")
# Extended commands that take a time the file cannot tell (probing, levelling, heat-and-wait).
_UNTIMED_EXTENDED: Final = frozenset(
    {"BED_MESH_CALIBRATE", "QUAD_GANTRY_LEVEL", "Z_TILT_ADJUST", "TEMPERATURE_WAIT"}
)


def extended_command(code: str) -> str | None:
    """Return the name of a Klipper extended command line (upper case, comments removed).

    None when the line is not one: a traditional G-code word, or a parameter without `=`
    (Klipper answers "Malformed command"), or quotes that do not close.
    """
    if _TRADITIONAL_RE.match(code):
        return None
    match = _EXTENDED_RE.fullmatch(code)
    if match is None:
        return None
    args = match.group(2) or ""
    if args:
        try:
            parts = shlex.split(args)
        except ValueError:
            return None
        if any("=" not in part for part in parts):
            return None
    return match.group(1)


# Keys copied from a slicer's configuration into `metadata` (PrusaSlicer/SuperSlicer/Orca).
_METADATA_KEYS: Final = (
    "printer_model",
    "printer_settings_id",
    "print_settings_id",
    "filament_settings_id",
    "nozzle_diameter",
    "filament_type",
    "filament_diameter",
    "filament_density",
    "layer_height",
    "first_layer_height",
    "fill_density",
    "perimeters",
    "temperature",
    "bed_temperature",
    "gcode_flavor",
    "bed_shape",
    "max_print_height",
)
# Cura's header keys mapped onto the same names.
_CURA_KEYS: Final = {
    "FLAVOR": "gcode_flavor",
    "Layer height": "layer_height",
    "MACHINE": "printer_model",
    "TARGET_MACHINE.NAME": "printer_model",
    "PRINTER": "printer_model",
}

# Row kinds in the per-line table.
_K_NONE, _K_G1, _K_G0, _K_G92, _K_G28, _K_CW, _K_CCW, _K_MODAL = 0, 1, 2, 3, 4, 5, 6, 7


# -- reading -------------------------------------------------------------------------------


# -- vectorised number parsing --------------------------------------------------------------

_U = np.uint64
_M0F = _U(0x0F0F0F0F0F0F0F0F)
_M30 = _U(0x3030303030303030)
_M46 = _U(0x4646464646464646)
_M80 = _U(0x8080808080808080)
_M01 = _U(0x0101010101010101)
_M2E = _U(0x2E2E2E2E2E2E2E2E)
_K1, _K2, _K3 = _U(2561), _U(6553601), _U(42949672960001)
_BYTE_INDEX = _U(0x0001020304050607)
_MFF, _MFFFF, _M32 = _U(0x00FF00FF00FF00FF), _U(0x0000FFFF0000FFFF), _U(0xFFFFFFFF)
_LOW = np.array([(1 << (8 * i)) - 1 for i in range(8)] + [(1 << 64) - 1], dtype=np.uint64)
_SHIFT = np.array([8 * (8 - i) if i else 0 for i in range(9)], dtype=np.uint64)
_FILL = np.array(
    [0x3030303030303030 & ((1 << (8 * (8 - i))) - 1) for i in range(9)], dtype=np.uint64
)
_POW10 = 10.0 ** np.arange(24)
_AXIS_CODE = np.zeros(256, dtype=np.int64)
for _i, _c in enumerate(b"XYZEFS"):
    _AXIS_CODE[_c] = _i + 1
_PAD = b"\n" * 32  # room for the eight-byte loads past the last line


def _parse8(x: U64, n: I64) -> tuple[U64, Bools]:
    """Parse the first n (1..8) ASCII digits of each little-endian word; flag non-digits."""
    # Shifting left drops the bytes after the number and right-aligns its digits; the
    # vacated low bytes become '0' so that short numbers read as having leading zeros.
    y = (x << _SHIFT[n]) | _FILL[n]
    ok = (((y + _M46) | (y - _M30)) & _M80) == 0
    z = y & _M0F
    z = ((z * _K1) >> _U(8)) & _MFF
    z = ((z * _K2) >> _U(16)) & _MFFFF
    z = ((z * _K3) >> _U(32)) & _M32
    return z, ok


def _parse_numbers(buf: U8, words: U64, start: I64, end: I64) -> tuple[F64, Bools]:
    """Parse the decimal numbers buf[start:end] without a Python loop; flag bad ones.

    Results equal float(text) exactly for up to 15 significant digits: the digits become an
    exact integer and one division by an exact power of ten rounds once.
    """
    first = buf[start]
    signed = (first == 45) | (first == 43)
    s0 = start + signed
    length = end - s0
    x0 = words[s0]
    t = x0 ^ _M2E  # zero byte where '.'
    hit = (t - _M01) & ~t & _M80  # exact for the lowest zero byte
    low = hit & (~hit + _U(1))  # 0x80 << 8 * (index of the dot), or 0
    # The index from the isolated bit: multiplying shifts _BYTE_INDEX by whole bytes, and its
    # top byte is then the index (0 without a dot, as 0x80 << 0 would give).
    dot = (((low >> _U(7)) * _BYTE_INDEX) >> _U(56)).view(np.int64)
    has_dot = (hit != 0) & (dot < length)
    dot = np.where(has_dot, dot, length)
    ndig = length - has_dot
    nfrac = length - dot - has_dot
    keep = _LOW[np.minimum(dot, 8)]
    # The digits with the dot squeezed out: the bytes after the dot move down one. Byte 7 then
    # comes from the ninth byte, which only an eight-digit number with a dot reads.
    merged = (x0 & keep) | ((x0 >> _U(8)) & ~keep)
    nine = np.flatnonzero(has_dot & (ndig >= 8))
    if nine.size:
        merged[nine] |= buf[s0[nine] + 8].astype(np.uint64) << _U(56)
    head, ok = _parse8(merged, np.clip(ndig, 0, 8))
    mant = head.astype(np.float64)
    long_ = ndig > 8
    if long_.any():
        idx = np.flatnonzero(long_)
        rest = np.minimum(ndig[idx] - 8, 9)
        tail, ok2 = _parse8(words[s0[idx] + 8 + has_dot[idx]], np.minimum(rest, 8))
        mant[idx] = mant[idx] * _POW10[rest] + tail.astype(np.float64)
        ok[idx] &= ok2 & (rest <= 8) & (dot[idx] <= 8)
    ok &= (ndig >= 1) & (length <= 20)
    value = mant / _POW10[np.clip(nfrac, 0, 23)]
    return np.where(first == 45, -value, value), ok


# -- the per-line table ----------------------------------------------------------------------

# Work on slices that fit in the CPU cache: on vase.gcode, parsing 645k numbers in 32k slices
# took 30 ms instead of 55 ms in one go, because each of the ~40 array operations re-reads
# its inputs from memory when they are larger than the cache.
_CHUNK_BYTES: Final = 1 << 18
_CHUNK: Final = 1 << 15


@dataclass(slots=True)
class _Table:
    """Per-line arrays: row kind and X, Y, Z, E, F, S values (NaN when absent), axis-major."""

    nlines: int
    starts: I64
    ends: I64
    kind: npt.NDArray[np.int8]
    vals: F64  # (6, nlines)
    fast: Bools  # parsed already, or nothing for the interpreter to do


def _scan(data: bytes) -> _Table:
    """Find and parse the plain G0/G1/G92 lines of the file, slice by slice."""
    n = len(data)
    buf = np.frombuffer(data + _PAD, dtype=np.uint8)
    words = as_strided(buf, shape=(buf.size - 7, 8), strides=(1, 1)).view("<u8")[:, 0]
    parts: list[tuple[I64, I64, npt.NDArray[np.int8], F64, Bools]] = []
    lo = 0
    while lo < n:
        hi = data.find(b"\n", min(lo + _CHUNK_BYTES, n - 1)) + 1
        if hi <= 0:
            hi = n
        parts.append(_scan_slice(buf, words, lo, hi))
        lo = hi
    starts = np.concatenate([p[0] for p in parts])
    ends = np.concatenate([p[1] for p in parts])
    kind = np.concatenate([p[2] for p in parts])
    vals = np.concatenate([p[3] for p in parts], axis=1)
    fast = np.concatenate([p[4] for p in parts])
    return _Table(int(starts.size), starts, ends, kind, vals, fast)


def _scan_slice(
    buf: U8, words: U64, lo: int, hi: int
) -> tuple[I64, I64, npt.NDArray[np.int8], F64, Bools]:
    """Scan the whole lines in buf[lo:hi]."""
    # Separators are bytes <= 32: space, tab, CR, LF. The padding puts a newline at len(data).
    seps = np.flatnonzero(buf[lo:hi] <= 32) + lo
    if buf[hi - 1] != 10:
        seps = np.append(seps, hi)  # last line without a newline
    sep_byte = buf[seps]
    sep_nl = sep_byte == 10
    nl = np.flatnonzero(sep_nl)
    ends = seps[nl]
    nlines = int(ends.size)
    starts = np.empty(nlines, dtype=np.int64)
    starts[0] = lo
    starts[1:] = ends[:-1] + 1

    b0, b1, b2, b3 = buf[starts], buf[starts + 1], buf[starts + 2], buf[starts + 3]
    is_g = b0 == 71
    g0 = is_g & (b1 == 48) & (b2 == 32)
    g1 = is_g & (b1 == 49) & (b2 == 32)
    g92 = is_g & (b1 == 57) & (b2 == 50) & (b3 == 32)
    # CAM programs often write moves as bare axis words that repeat the last G0/G1.
    modal = (b0 == 88) | (b0 == 89) | (b0 == 90)
    cand = g0 | g1 | g92 | modal
    # Lines the interpreter can skip: blank lines and PrusaSlicer/Cura tags such as ;TYPE:,
    # ;WIDTH:, ;HEIGHT:, ;Z: (about 15 % of a print file, 1 us each in Python).
    tag = (b0 == 59) & (((b1 == 84) & (b2 == 89)) | (b1 == 87) | (b1 == 72) | (b1 == 90))
    skip = tag | (starts == ends)
    kind = np.zeros(nlines, dtype=np.int8)
    vals = np.full((6, nlines), np.nan)

    # A word starts after a space or tab; a CR only ends one (CRLF files stay fast).
    # The line of each separator: line k owns the separators after line k - 1's newline up to
    # its own (a repeat runs three times faster than a cumulative sum over the separators).
    line_of_sep = np.repeat(np.arange(nlines), np.diff(nl, prepend=-1))
    word_sep = sep_byte[:-1]
    tok = np.flatnonzero((word_sep == 32) | (word_sep == 9))
    tok_line = line_of_sep[tok]
    keep = cand[tok_line]
    tok, tok_line = tok[keep], tok_line[keep]
    letter_at = seps[tok] + 1
    word_end = seps[tok + 1]
    first = np.flatnonzero(modal)
    if first.size:
        # The first word of a modal line starts the line; it ends at the line's first separator.
        first_sep = np.empty(nlines, dtype=np.int64)
        first_sep[0] = 0
        first_sep[1:] = nl[:-1] + 1
        letter_at = np.concatenate([letter_at, starts[first]])
        word_end = np.concatenate([word_end, seps[first_sep[first]]])
        tok_line = np.concatenate([tok_line, first])
    code = _AXIS_CODE[buf[letter_at]]
    value, ok = _parse_numbers(buf, words, letter_at + 1, word_end)
    ok &= code > 0
    cand[tok_line[~ok]] = False  # any odd word sends the whole line to the slow path
    keep = cand[tok_line]
    # One flat index rather than a pair: numpy scatters a single index array faster.
    vals.reshape(-1)[(code[keep] - 1) * nlines + tok_line[keep]] = value[keep]
    kind[g1 & cand] = _K_G1
    kind[g0 & cand] = _K_G0
    kind[g92 & cand] = _K_G92
    kind[modal & cand] = _K_MODAL
    return starts, ends, kind, vals, cand | skip


# -- the slow path: every other line ----------------------------------------------------------


_LINE_RE: Final = re.compile(
    r"(?:N[ \t]*\d+[ \t]*)?"  # a line number
    r"(?:[GMT][ \t]*\d+(?:\.\d+)?|[XYZABCUVWIJKEFS][ \t]*[-+]?(?:\d+\.?\d*|\.\d+))"  # command
    r"(?:[ \t]*[A-Z](?:[ \t]*[-+]?(?:\d+\.?\d*|\.\d+)|(?=[ \t*]|$)))*"  # words, or flags
    r"[ \t]*(?:\*[ \t]*\d+)?"  # a checksum
)


class _Words:
    """The command words a program uses, and its lines that are not G-code at all."""

    __slots__ = (
        "counts",
        "extended",
        "extended_first",
        "first",
        "longest",
        "unparsed",
        "unparsed_examples",
    )

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.first: dict[str, int] = {}
        self.extended: dict[str, int] = {}
        self.extended_first: dict[str, int] = {}
        self.unparsed = 0
        self.unparsed_examples: list[tuple[int, str]] = []
        self.longest: tuple[int, int, str] | None = None

    def add(self, word: str, i: int) -> None:
        self.counts[word] = self.counts.get(word, 0) + 1
        self.first.setdefault(word, i + 1)

    def codes(self, gs: list[int], ms: list[int], tool: bool, i: int) -> None:
        for letter, codes in (("G", gs), ("M", ms)):
            for c in codes:
                self.add(f"{letter}{c // 10}" if c % 10 == 0 else f"{letter}{c / 10:g}", i)
        if tool:
            self.add("T", i)

    def line(self, i: int, code: str) -> str | None:
        """Record a command line; return its name when it is a Klipper extended command."""
        if self.longest is None or len(code) > self.longest[1]:
            self.longest = (i + 1, len(code), code[:120])
        if (
            code[0] != "$"
            and code.split(None, 1)[0] not in _M_STRING_ARGS
            and _LINE_RE.fullmatch(code) is None
        ):
            name = extended_command(code)
            if name is not None:
                self.extended[name] = self.extended.get(name, 0) + 1
                self.extended_first.setdefault(name, i + 1)
                return name
            self.unparsed += 1
            if len(self.unparsed_examples) < 3:
                self.unparsed_examples.append((i + 1, code[:80]))
        return None


@dataclass(slots=True)
class _Events:
    """What the interpreter found besides moves, keyed by 0-based line number."""

    modes: list[tuple[int, str]] = field(default_factory=list)
    limits: list[tuple[int, str, float]] = field(default_factory=list)
    syncs: list[int] = field(default_factory=list)
    # Lines that empty GRBL's planner only: spindle and coolant changes, program end.
    grbl_syncs: list[int] = field(default_factory=list)
    spindle: list[tuple[int, bool]] = field(default_factory=list)  # (line, on) changes
    arcs: dict[int, tuple[float, float, float | None]] = field(default_factory=dict)
    any_arcs: bool = False
    dwell_s: float = 0.0  # G4 S (seconds) and G4 P (milliseconds on Marlin, seconds on GRBL)
    dwell_p: float = 0.0
    firmware: list[FirmwareCommand] = field(default_factory=list)
    untimed: dict[str, int] = field(default_factory=dict)
    notes: set[str] = field(default_factory=set)
    config: dict[str, str] = field(default_factory=dict)
    header: dict[str, str] = field(default_factory=dict)
    thumbnails: list[Thumbnail] = field(default_factory=list)
    layer_markers: int = 0
    max_hotend: float | None = None
    max_bed: float | None = None
    heaters: bool = False
    spindle_on: bool = False
    laser_mode: bool = False
    m4: bool = False
    tool_changes: int = 0
    inch_seen: bool = False
    mm_seen: bool = False
    slicer: str | None = None
    slicer_version: str | None = None
    words: _Words = field(default_factory=lambda: _Words())


def _has_axis(p: dict[str, float | None]) -> bool:
    return "X" in p or "Y" in p or "Z" in p or "E" in p


class _Interpreter:
    """Interpret the lines the vectorised scan left, writing into the table and events.

    One interpreter reads the whole file, chunk by chunk: `chunk` hands it the next table.
    Line numbers in the per-chunk events are 0-based within the chunk.
    """

    def __init__(self) -> None:
        empty = np.zeros(0, dtype=np.int64)
        self.t = _Table(
            0, empty, empty, np.zeros(0, dtype=np.int8), np.zeros((6, 0)), np.zeros(0, dtype=bool)
        )
        self.data = b""
        self.offset = 0  # lines before this chunk
        self.ev = _Events()
        self.motion = _K_G0  # GRBL's power-on motion mode
        self.motion_line = -1
        self.spindle_state = 5  # M5
        self.tool = 0
        self.plane = 17
        self.text = ""  # the command being interpreted, comments removed
        self.thumb: tuple[int, int, int, list[str], str] | None = None

    def chunk(self, table: _Table, data: bytes, offset: int) -> None:
        """Start on the next chunk: clear the per-chunk events."""
        self.t, self.data, self.offset = table, data, offset
        ev = self.ev
        ev.modes, ev.limits, ev.syncs, ev.grbl_syncs, ev.spindle = [], [], [], [], []
        ev.arcs = {}
        self.motion_line = -1

    def run(self, lines: I64) -> _Events:
        """Interpret each given line in file order."""
        t = self.t
        kind = t.kind
        # The last explicit G0/G1 among the fast lines before each line to interpret, for CNC
        # lines that omit the G word (a search for the few lines, not a pass over all).
        fast_motion = np.flatnonzero((kind == _K_G0) | (kind == _K_G1))
        at = np.searchsorted(fast_motion, lines, side="right") - 1
        last_fast = np.where(
            at >= 0, fast_motion[np.maximum(at, 0)] if fast_motion.size else -1, -1
        )
        self._finish_chunk = (int(fast_motion[-1]) if fast_motion.size else -1, kind)
        data = self.data
        # ASCII (nearly every file): decode the chunk once, not line by line.
        ascii_text = data.decode("ascii") if data.isascii() else None
        for i, s, e, lf in zip(
            lines.tolist(),
            t.starts[lines].tolist(),
            t.ends[lines].tolist(),
            last_fast.tolist(),
            strict=True,
        ):
            if ascii_text is not None:
                raw = ascii_text[s:e].strip()
            else:
                raw = data[s:e].decode("utf-8", "replace").strip()
            if not raw:
                continue
            if raw[0] == ";":
                self._comment(raw, i)
                continue
            if lf > self.motion_line:
                self.motion, self.motion_line = int(kind[lf]), lf
            self._command(raw, i)
        last, _ = self._finish_chunk
        if last > self.motion_line:  # the motion mode the next chunk starts in
            self.motion, self.motion_line = int(kind[last]), last
        return self.ev

    def finish(self) -> None:
        """Note what the end of the file left open."""
        if self.thumb is not None:
            self.ev.notes.add("thumbnail block without an end marker ignored")

    # comments ------------------------------------------------------------------------------

    def _comment(self, raw: str, i: int) -> None:
        ev = self.ev
        body = raw[1:]
        if self.thumb is not None:
            self._thumbnail_line(body.strip())
            return
        if body.startswith("LAYER_CHANGE") or body.startswith("LAYER:"):
            ev.layer_markers += 1
            return
        if not body.startswith(" "):
            self._cura_comment(body)
            return
        body = body.strip()
        if " = " in body:
            key, _, value = body.partition(" = ")
            ev.config[key.strip()] = value.strip()
            return
        m = _THUMB_RE.match(body)
        if m:
            fmt = (m.group(1) or "PNG").upper()
            self.thumb = (int(m.group(2)), int(m.group(3)), int(m.group(4)), [], fmt)
            return
        if ev.slicer is None:
            g = _GENERATED_RE.search(body)
            if g:
                ev.slicer, ev.slicer_version = g.group(1), g.group(2)

    def _cura_comment(self, body: str) -> None:
        ev = self.ev
        key, sep, value = body.partition(":")
        if not sep:
            g = _CURA_RE.search(body)
            if g and ev.slicer is None:
                ev.slicer, ev.slicer_version = g.group(1).replace("_SteamEngine", ""), g.group(2)
            return
        if key in ("TIME", "Filament used", "LAYER_COUNT") or key in _CURA_KEYS:
            ev.header[key] = value.strip()
        elif key.startswith("Generated with"):
            g = _CURA_RE.search(body)
            if g and ev.slicer is None:
                ev.slicer, ev.slicer_version = g.group(1).replace("_SteamEngine", ""), g.group(2)

    def _thumbnail_line(self, body: str) -> None:
        assert self.thumb is not None
        width, height, length, parts, fmt = self.thumb
        if body.startswith("thumbnail") and body.endswith("end"):
            data = "".join(parts)
            if fmt != "PNG":
                self.ev.notes.add(f"{fmt} thumbnail skipped (only PNG is returned)")
            elif len(data) != length:
                self.ev.notes.add(f"thumbnail {width}x{height} length {len(data)} != {length}")
            else:
                self.ev.thumbnails.append(Thumbnail(width, height, data))
            self.thumb = None
        else:
            parts.append(body)

    # commands ------------------------------------------------------------------------------

    def _command(self, raw: str, i: int) -> None:
        ev = self.ev
        code_part = raw.split(";", 1)[0]
        if "(" in code_part:
            code_part = _PAREN_RE.sub(" ", code_part)
        code_part = code_part.strip().upper()
        if not code_part or code_part == "%":
            return
        extended = ev.words.line(self.offset + i, code_part)
        if extended is not None:  # Klipper's: no G-code words to read in it
            if extended in _UNTIMED_EXTENDED:
                ev.untimed[extended] = ev.untimed.get(extended, 0) + 1
            return
        if code_part[0] == "$":
            self._grbl(code_part, i)
            return
        head = code_part.split(None, 1)[0]
        if head in _M_STRING_ARGS:
            ev.words.add(head, self.offset + i)
            return
        self.text = code_part
        gs: list[int] = []
        ms: list[int] = []
        p: dict[str, float | None] = {}
        for letter, num in _WORD_RE.findall(code_part):
            if letter == "*":
                break  # checksum
            if letter == "G" and num:
                gs.append(round(float(num) * 10))
            elif letter == "M" and num:
                ms.append(round(float(num) * 10))
            elif letter == "N" and not gs and not ms:
                continue  # line number
            else:
                p[letter] = float(num) if num else None
        ev.words.codes(gs, ms, "T" in p and not gs and not ms, self.offset + i)
        for m in ms:
            self._mcode(m, p, i)
        if "T" in p and not gs and (not ms or 60 in ms):  # "T1" (Marlin), "M6 T1" (CNC)
            tool = int(p["T"] or 0)
            if tool != self.tool:
                self.tool = tool
                ev.tool_changes += 1
                ev.syncs.append(i)
        if "S" in p and p["S"] is not None and not ms:
            self.t.vals[5, i] = p["S"]  # spindle speed or laser power
        if "F" in p and p["F"] is not None:
            self.t.vals[4, i] = p["F"]
        motion_written = False
        for g in gs:
            if g in (0, 10, 20, 30):
                self.motion = (_K_G0, _K_G1, _K_CW, _K_CCW)[g // 10]
                self.motion_line = i
                self._move(self.motion, p, i)
                motion_written = True
            else:
                self._gcode(g, p, i)
        modal = not motion_written and not ms and self.motion != _K_NONE and _has_axis(p)
        if modal and not any(g in (280, 920, 100, 40) for g in gs):
            self._move(self.motion, p, i)  # a line of axis words repeats the last motion

    def _move(self, kind: int, p: dict[str, float | None], i: int) -> None:
        t = self.t
        if kind in (_K_CW, _K_CCW):
            if self.plane != 17:
                self.ev.notes.add(f"arcs in plane G{self.plane} treated as straight moves")
                kind = _K_G1
            elif "R" in p or "I" in p or "J" in p:
                self.ev.arcs[i] = (p.get("I") or 0.0, p.get("J") or 0.0, p.get("R"))
                self.ev.any_arcs = True
            else:
                kind = _K_G1
        t.kind[i] = kind
        for col, letter in enumerate("XYZE"):
            v = p.get(letter)
            if v is not None:
                t.vals[col, i] = v

    def _gcode(self, g: int, p: dict[str, float | None], i: int) -> None:
        ev = self.ev
        t = self.t
        if g == 40:
            ev.syncs.append(i)
            s_val, p_val = p.get("S"), p.get("P")
            if s_val is not None:
                ev.dwell_s += s_val
            elif p_val is not None:
                ev.dwell_p += p_val
        elif g == 900:
            ev.modes.append((i, "G90"))
        elif g == 910:
            ev.modes.append((i, "G91"))
        elif g == 200:
            ev.modes.append((i, "G20"))
            ev.inch_seen = True
        elif g == 210:
            ev.modes.append((i, "G21"))
            ev.mm_seen = True
        elif g == 920:
            t.kind[i] = _K_G92
            axes = [a for a in "XYZE" if a in p]
            if not axes:
                t.vals[:4, i] = 0.0
            for col, letter in enumerate("XYZE"):
                if letter in p:
                    t.vals[col, i] = p[letter] or 0.0
            if "E" not in p:
                ev.syncs.append(i)  # PrusaSlicer synchronises the planner here
        elif g == 280:
            t.kind[i] = _K_G28
            axes = [a for a in "XYZ" if a in p] or ["X", "Y", "Z"]
            for col, letter in enumerate("XYZ"):
                if letter in axes:
                    t.vals[col, i] = 0.0
        elif g in (170, 180, 190):
            self.plane = g // 10
        elif g == 800:
            self.motion = _K_NONE
            self.motion_line = i
        elif g == 100 and p.get("L") in (2.0, 20.0):
            reason = "G10 L2/L20 writes work offsets to EEPROM"
            ev.firmware.append(FirmwareCommand(self.offset + i + 1, self.text, reason, True))
        elif g in _FIRMWARE_G:
            reason, persistent = _FIRMWARE_G[g]
            ev.firmware.append(FirmwareCommand(self.offset + i + 1, self.text, reason, persistent))
        elif g in _UNTIMED_G:
            name = _UNTIMED_G[g]
            ev.untimed[name] = ev.untimed.get(name, 0) + 1
            ev.syncs.append(i)
        elif 810 <= g <= 890:
            ev.notes.add(f"canned cycle G{g / 10:g} not simulated")

    def _mcode(self, m: int, p: dict[str, float | None], i: int) -> None:
        ev = self.ev
        s = p.get("S")
        if m in (1040, 1090):
            ev.heaters = True
            temp = s if s is not None else p.get("R")
            if temp is not None:
                ev.max_hotend = temp if ev.max_hotend is None else max(ev.max_hotend, temp)
        elif m in (1400, 1900):
            ev.heaters = True
            temp = s if s is not None else p.get("R")
            if temp is not None:
                ev.max_bed = temp if ev.max_bed is None else max(ev.max_bed, temp)
        elif m in (30, 40, 50):
            if m != 50:
                ev.spindle_on = True
                ev.m4 = ev.m4 or m == 40
            if s is not None:
                self.t.vals[5, i] = s
            if m // 10 != self.spindle_state:
                # GRBL empties its planner on every spindle state change, even in laser mode.
                self.spindle_state = m // 10
                ev.grbl_syncs.append(i)
                ev.spindle.append((i, m != 50))
        elif m in (70, 80, 90, 20, 300):
            ev.grbl_syncs.append(i)  # coolant changes and program end wait for the planner
        elif m == 820:
            ev.modes.append((i, "M82"))
        elif m == 830:
            ev.modes.append((i, "M83"))
        elif m in (2010, 2030, 2040, 2050):
            self._limits(m, p, i)
        elif m == 4000:
            ev.syncs.append(i)
        if m in _UNTIMED_M:
            name = _UNTIMED_M[m]
            ev.untimed[name] = ev.untimed.get(name, 0) + 1
            if m in (0, 10, 60, 6000):
                ev.syncs.append(i)
        if m in _FIRMWARE_M:
            reason, persistent = _FIRMWARE_M[m]
            ev.firmware.append(FirmwareCommand(self.offset + i + 1, self.text, reason, persistent))

    def _limits(self, m: int, p: dict[str, float | None], i: int) -> None:
        out = self.ev.limits
        for letter, value in p.items():
            if value is not None:
                out.append((i, f"M{m // 10}{letter}", value))

    def _grbl(self, code: str, i: int) -> None:
        m = _GRBL_SETTING_RE.match(code.replace(" ", ""))
        self.ev.words.add(
            f"${m.group(1)}=" if m else code.replace(" ", "").split("=")[0], self.offset + i
        )
        if not m:
            return
        key, value = m.group(1), m.group(2)
        if key == "32" and value.strip() in ("1", "1.0"):
            self.ev.laser_mode = True
        what = {
            "RST": "GRBL $RST= restores EEPROM defaults",
            "I": "GRBL $I= writes the build info",
        }.get(key, f"GRBL ${key}= writes a setting to EEPROM")
        if key.startswith("N"):
            what = "GRBL $N= stores a startup block in EEPROM"
        self.ev.firmware.append(FirmwareCommand(self.offset + i + 1, code, what, True))


# -- positions and moves ---------------------------------------------------------------------


def _ffill_index(mask: Bools, shift: int = 0) -> I64:
    """Return, for each position, the index of the last True at or before it (-1 if none),
    plus `shift`."""
    n = mask.size
    hits = np.flatnonzero(mask)
    if hits.size * 8 < n:
        # Few hits (feed words, Z moves): repeat each hit up to the next one. A running
        # maximum costs about 7 ns a position whatever the mask; this costs per hit.
        values = np.empty(hits.size + 1, dtype=np.int64)
        values[0] = -1 + shift
        values[1:] = hits + shift
        return np.repeat(values, np.diff(hits, prepend=0, append=n))
    idx = np.where(mask, np.arange(shift, n + shift), -1 + shift)
    return np.maximum.accumulate(idx) if idx.size else idx


def _state_at(lines: I64, events: list[tuple[int, str]], on: str, off: str, initial: bool) -> Bools:
    """Return a modal on/off state at each of the given lines from mode events."""
    pts = [(ln, code == on) for ln, code in events if code in (on, off)]
    if not pts:
        return np.full(lines.size, initial)
    at = np.array([ln for ln, _ in pts], dtype=np.int64)
    state = np.array([initial] + [v for _, v in pts])
    # side="right": "G91 G1 X10" moves relatively; modes apply before motion on their line.
    return state[np.searchsorted(at, lines, side="right")]


def _final_state(events: list[tuple[int, str]], on: str, off: str, initial: bool) -> bool:
    """Return the on/off state after the last of the mode events."""
    for _, code in reversed(events):
        if code in (on, off):
            return code == on
    return initial


@dataclass(slots=True)
class _Carry:
    """What one chunk of the file hands to the next: modal state and the planner's tail."""

    pos: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    inch: bool = False
    rel: bool = False
    rel_e: bool = False
    feed_mm_min: float = DEFAULT_FEED_MM_S * 60
    motion_kind: int = _K_G0  # for bare axis-word lines (GRBL starts in G0)
    spindle_on: bool = False
    s_prev: float = math.nan  # the last S word
    sync_pending: bool = True  # the next move starts from rest
    tail: Blocks | None = None  # moves planned but not final yet
    tail_entry2: float | None = None
    tail_lines: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    line_time: F64 = field(default_factory=lambda: np.zeros(0))  # per _PROFILE_LINES lines
    prev_d: F64 | None = None  # (4, 1) the last move, for the next move's junction
    prev_feed: F64 | None = None
    prev_lim: PlanLimits | None = None
    time_s: float = 0.0
    # Statistics over the moves so far.
    moves: int = 0
    e_sum: float = 0.0
    e_high: float = 0.0
    xyz_len: float = 0.0
    extrude_len: float = 0.0
    bbox_fdm: list[float] | None = None
    bbox_cut: list[float] | None = None
    z_fdm: F64 = field(default_factory=lambda: np.zeros(0))
    z_cut: F64 = field(default_factory=lambda: np.zeros(0))
    extruding: bool = False
    min_cut_z: float | None = None
    s_max: float | None = None


@dataclass(slots=True)
class _Placed:
    """Every row (move, G92, G28) with its end position and delta, axis-major."""

    rows: I64  # 0-based line of each row
    kinds: npt.NDArray[np.int8]
    pos: F64  # (4, n) end position X Y Z E, mm
    delta: F64  # (4, n) change from the previous row, mm (0 for G92)
    inch: Bools
    feed: F64  # requested feed rate, mm/s
    start: tuple[float, float, float, float]  # the position before the first row


@dataclass(slots=True)
class _Moves:
    """Straight moves in file order, arcs already split into segments."""

    d: F64  # (4, n) deltas X Y Z E in mm
    end: F64  # (4, n) end positions
    feed: F64  # requested mm/s
    rapid: Bools
    line: I64  # 0-based source line


def _positions(t: _Table, ev: _Events, carry: _Carry) -> _Placed:
    """Track the logical position through every row, honouring G90/G91, M82/M83, G92, G20."""
    rows = np.flatnonzero(t.kind != _K_NONE)
    kinds = t.kind[rows]
    # np.take keeps the result C-ordered; v[:, rows] would be Fortran-ordered and make every
    # per-axis operation below stride through memory (25 ms instead of 8 on vase.gcode).
    v = np.take(t.vals[:4], rows, axis=1)
    inch = _state_at(rows, ev.modes, "G20", "G21", carry.inch)
    rel = _state_at(rows, ev.modes, "G91", "G90", carry.rel)
    rel_e = rel | _state_at(rows, ev.modes, "M83", "M82", carry.rel_e)
    if inch.any():
        v = np.where(inch, v * INCH, v)
    # Feed is modal across every line, not just rows (a CNC line may hold only F).
    fcol = t.vals[4]
    f_line = _ffill_index(fcol > 0)  # Marlin ignores F0 (and NaN > 0 is False)
    last_f = f_line[rows]
    feed_mm_min = np.where(last_f >= 0, fcol[np.maximum(last_f, 0)], carry.feed_mm_min)
    inch_f = _state_at(np.maximum(last_f, 0), ev.modes, "G20", "G21", carry.inch)
    if inch_f.any():
        feed_mm_min = np.where((last_f >= 0) & inch_f, feed_mm_min * INCH, feed_mm_min)
    present = ~np.isnan(v)
    setter = (kinds == _K_G92) | (kinds == _K_G28)
    n = v.shape[1]
    pos = np.empty_like(v)
    prev = np.empty_like(v)
    start = np.array(carry.pos, dtype=np.float64)
    prev[:, 0:1] = start.reshape(4, 1)[:, : min(1, n)]
    if not rel_e.any():
        # All absolute (the usual slicer output): a position is the last value written.
        # Column 0 of `padded` is the start position, so "nothing written yet" needs no
        # special case.
        padded = np.empty((4, n + 1))
        padded[:, 0] = start
        padded[:, 1:] = v
        step = np.arange(1, n + 1)
        for a in range(4):
            if np.count_nonzero(present[a]) * 8 < n:  # Z, mostly: see _ffill_index
                last = _ffill_index(present[a], 1)
            else:
                last = np.maximum.accumulate(step * present[a])
            pos[a] = padded[a][last]
        prev[:, 1:] = pos[:, :-1]
        delta = pos - prev
    else:
        delta = np.empty_like(v)
        for a in range(4):
            va = v[a]
            relative = (rel_e if a == 3 else rel) & ~setter
            here = present[a]
            inc = here & relative
            cs = np.cumsum(np.where(inc, va, 0.0))
            last_abs = _ffill_index(here & ~relative)
            at = np.maximum(last_abs, 0)
            base = np.where(last_abs >= 0, va[at] - cs[at], start[a])
            pos[a] = np.where(here & ~relative, va, base + cs)
            prev[a, 1:] = pos[a, :-1]
            # Relative words are their own delta: exact, with no cancellation error.
            delta[a] = np.where(inc, va, pos[a] - prev[a])
    delta[:, kinds == _K_G92] = 0.0
    placed = _Placed(
        rows, kinds, pos, delta, inch, feed_mm_min / 60.0, (start[0], start[1], start[2], start[3])
    )
    # Hand the modal state on to the next chunk.
    if n:
        carry.pos = [float(x) for x in pos[:, -1]]
    if t.nlines and f_line[-1] >= 0:
        fl = int(f_line[-1])
        value = float(fcol[fl])
        inch_at = _state_at(np.array([fl]), ev.modes, "G20", "G21", carry.inch)
        carry.feed_mm_min = value * INCH if bool(inch_at[0]) else value
    carry.inch = _final_state(ev.modes, "G20", "G21", carry.inch)
    carry.rel = _final_state(ev.modes, "G91", "G90", carry.rel)
    carry.rel_e = _final_state(ev.modes, "M83", "M82", carry.rel_e)
    return placed


def _arc_points(
    start: tuple[float, ...],
    end: tuple[float, ...],
    ijr: tuple[float, float, float | None],
    clockwise: bool,
    scale: float,
    lim: MachineLimits,
    feed: float,
) -> list[tuple[float, ...]]:
    """Split an XY arc into the straight segments the firmware would run."""
    sx, sy, sz, se = start
    ex, ey, ez, ee = end
    i_off, j_off, radius = ijr
    if radius is not None:
        r = radius * scale
        dx, dy = ex - sx, ey - sy
        chord = math.hypot(dx, dy)
        if chord == 0 or r == 0:
            return [end]
        h2 = r * r - chord * chord / 4
        h = math.sqrt(h2) if h2 > 0 else 0.0
        # R > 0 takes the short arc, R < 0 the long one; the side depends on the direction.
        sign = (-1.0 if clockwise else 1.0) * (1.0 if r > 0 else -1.0)
        cx = sx + dx / 2 - sign * h * dy / chord
        cy = sy + dy / 2 + sign * h * dx / chord
    else:
        cx, cy = sx + i_off * scale, sy + j_off * scale
    r0x, r0y = sx - cx, sy - cy
    r1x, r1y = ex - cx, ey - cy
    rad = math.hypot(r0x, r0y)
    if rad == 0:
        return [end]
    angle = math.atan2(r0x * r1y - r0y * r1x, r0x * r1x + r0y * r1y)
    if abs(ex - sx) < 1e-9 and abs(ey - sy) < 1e-9:
        angle = -2 * math.pi if clockwise else 2 * math.pi  # full circle
    elif clockwise and angle >= -5e-7:
        angle -= 2 * math.pi
    elif not clockwise and angle <= 5e-7:
        angle += 2 * math.pi
    if lim.firmware == "grbl":
        # GRBL's mc_arc: chords within the arc tolerance ($12) of the true arc.
        n = grbl_arc_segments(angle, rad, lim.arc_tolerance)
    else:
        # Marlin 2: about 50 segments per second, between 0.1 and 1 mm.
        seg_len = min(max(feed / 50, 0.1), 1.0)
        n = max(1, int(abs(angle) * rad / seg_len))
    pts: list[tuple[float, ...]] = []
    for k in range(1, n):
        f = k / n
        th = angle * f
        c, s = math.cos(th), math.sin(th)
        pts.append(
            (cx + r0x * c - r0y * s, cy + r0x * s + r0y * c, sz + (ez - sz) * f, se + (ee - se) * f)
        )
    pts.append(end)
    return pts


def _moves(placed: _Placed, ev: _Events, lim: MachineLimits) -> _Moves:
    """Build the straight-move list the planner consumes, arcs split into segments."""
    rows, kinds, pos, delta = placed.rows, placed.kinds, placed.pos, placed.delta
    motion = (kinds != _K_G92) & (kinds != _K_NONE)
    moving = motion & np.any(delta != 0.0, axis=0)
    is_arc = (kinds == _K_CW) | (kinds == _K_CCW)
    rapid = kinds == _K_G0
    feed = placed.feed
    if lim.firmware == "grbl":
        feed = np.where(rapid, RAPID_MM_S, feed)
    if not is_arc.any():
        sel = np.flatnonzero(moving)
        return _Moves(
            np.take(delta, sel, axis=1), np.take(pos, sel, axis=1), feed[sel], rapid[sel], rows[sel]
        )
    # Split the arcs in Python (math on floats is cheaper than numpy calls per arc), then
    # merge the segments with the straight moves in file order.
    starts: list[tuple[float, ...]] = []
    ends: list[tuple[float, ...]] = []
    src: list[int] = []
    pos_t = pos.T
    for r in np.flatnonzero(is_arc).tolist():
        start = tuple(pos_t[r - 1].tolist()) if r > 0 else placed.start
        pts = _arc_points(
            start,
            tuple(pos_t[r].tolist()),
            ev.arcs.get(int(rows[r]), (0.0, 0.0, None)),
            bool(kinds[r] == _K_CW),
            INCH if placed.inch[r] else 1.0,
            lim,
            float(feed[r]),
        )
        starts.append(start)
        starts.extend(pts[:-1])
        ends.extend(pts)
        src.extend([r] * len(pts))
    arc_end = np.array(ends, dtype=np.float64).T
    arc_d = arc_end - np.array(starts, dtype=np.float64).T
    keep = np.any(arc_d != 0.0, axis=0)
    lin = np.flatnonzero(moving & ~is_arc)
    src_all = np.concatenate([lin, np.array(src, dtype=np.int64)[keep]])
    order = np.argsort(src_all, kind="stable")
    d_all = np.concatenate([np.take(delta, lin, axis=1), np.compress(keep, arc_d, axis=1)], axis=1)
    e_all = np.concatenate([np.take(pos, lin, axis=1), np.compress(keep, arc_end, axis=1)], axis=1)
    src_all = src_all[order]
    return _Moves(
        np.take(d_all, order, axis=1),
        np.take(e_all, order, axis=1),
        feed[src_all],
        rapid[src_all],
        rows[src_all],
    )


# -- the planner -----------------------------------------------------------------------------


_AXIS_INDEX: Final = {"X": 0, "Y": 1, "Z": 2, "E": 3}
_SCALAR_LIMITS: Final = (
    "print_acc",
    "retract_acc",
    "travel_acc",
    "jd",
    "min_extrude",
    "min_travel",
)


class _LimitsTimeline:
    """The file's M201/M203/M204/M205, applied in order, chunk after chunk."""

    def __init__(self, base: MachineLimits, m203_scale: float) -> None:
        self.grbl = base.firmware == "grbl"
        self.m203_scale = m203_scale
        self.jerk_set = False
        self.state: dict[str, Any] = {
            "axis_acc": list(base.max_acceleration),
            "axis_feed": list(base.max_feedrate),
            "axis_jerk": list(base.max_jerk),
            "print_acc": base.print_acceleration,
            "retract_acc": base.retract_acceleration,
            "travel_acc": base.travel_acceleration,
            "jd": math.nan if base.junction_deviation is None else base.junction_deviation,
            "min_extrude": base.min_extrude_feedrate,
            "min_travel": base.min_travel_feedrate,
        }

    def per_move(self, events: list[tuple[int, str, float]], move_lines: I64) -> PlanLimits:
        """Return the limits of each move of a chunk (one column if they never change)."""
        state = self.state
        snaps: list[dict[str, Any]] = [_copy_state(state)]
        at: list[int] = []
        for line, word, value in events:
            cmd, letter = word[:4], word[4:]
            axis = _AXIS_INDEX.get(letter)
            if cmd == "M201" and axis is not None:
                state["axis_acc"][axis] = value
            elif cmd == "M203" and axis is not None:
                state["axis_feed"][axis] = value * self.m203_scale
            elif cmd == "M204" and letter in ("S", "P", "R", "T"):
                if letter in "SP":
                    state["print_acc"] = value
                if letter in "ST":
                    state["travel_acc"] = value
                if letter == "R":
                    state["retract_acc"] = value
            elif cmd == "M205" and letter in ("X", "Y", "Z", "E", "S", "T", "J"):
                if letter == "X":
                    state["axis_jerk"][0] = state["axis_jerk"][1] = value  # X sets X and Y
                elif axis is not None:
                    state["axis_jerk"][axis] = value
                elif letter == "S":
                    state["min_extrude"] = value
                elif letter == "T":
                    state["min_travel"] = value
                elif not self.jerk_set:
                    state["jd"] = value
                if letter in ("X", "Y"):
                    self.jerk_set = True
                    state["jd"] = math.nan  # PrusaSlicer plans with jerk whenever jerk is given
            else:
                continue
            if at and at[-1] == line:
                snaps[-1] = _copy_state(state)
            else:
                at.append(line)
                snaps.append(_copy_state(state))
        which = np.searchsorted(np.array(at, dtype=np.int64), move_lines, side="left")
        if which.size == 0 or bool((which == which[0]).all()):
            which = which[:1] if which.size else np.zeros(1, dtype=np.int64)

        def axes(key: str) -> F64:
            return np.array([s[key] for s in snaps], dtype=np.float64).T[:, which]

        def one(key: str) -> F64:
            return np.array([s[key] for s in snaps], dtype=np.float64)[which]

        return PlanLimits(
            axes("axis_acc"),
            axes("axis_feed"),
            axes("axis_jerk"),
            one("print_acc"),
            one("retract_acc"),
            one("travel_acc"),
            one("jd"),
            one("min_extrude"),
            one("min_travel"),
            grbl=self.grbl,
        )


def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, list) else v for k, v in state.items()}


def _column(lim: PlanLimits, k: int) -> PlanLimits:
    """Return the limits of move k alone (one column)."""
    if lim.print_acc.size == 1:
        return lim
    return lim.slice(k, k + 1)


def _prepend(lim: PlanLimits, col: PlanLimits, n: int) -> PlanLimits:
    """Return limits for [col] + moves, materialising constants when the two differ."""
    if lim.print_acc.size == 1 and col.print_acc.size == 1 and _same(lim, col):
        return lim

    def wide(x: F64, m: int) -> F64:
        return np.broadcast_to(x, (*x.shape[:-1], m)) if x.shape[-1] == 1 else x

    parts: dict[str, F64] = {}
    for name in ("axis_acc", "axis_feed", "axis_jerk", *_SCALAR_LIMITS):
        a, b = getattr(col, name), wide(getattr(lim, name), n)
        parts[name] = np.concatenate([a, b], axis=-1)
    return PlanLimits(**parts, grbl=lim.grbl)


def _same(a: PlanLimits, b: PlanLimits) -> bool:
    return all(
        np.array_equal(getattr(a, k), getattr(b, k), equal_nan=True)
        for k in ("axis_acc", "axis_feed", "axis_jerk", *_SCALAR_LIMITS)
    )


_PROFILE_LINES: Final = 256  # the time profile's resolution while planning


def _plan_chunk(
    mv: _Moves,
    syncs: I64,
    lim: PlanLimits,
    offset: int,
    carry: _Carry,
    window: int,
    final: bool,
) -> None:
    """Plan a chunk's moves after the carried tail; add the time of the moves now final."""
    n = mv.d.shape[1]
    lines = mv.line + offset
    first = np.zeros(n, dtype=bool)
    last = np.zeros(n, dtype=bool)
    if n:
        seg = np.searchsorted(syncs, mv.line, side="left")
        first[1:] = seg[1:] != seg[:-1]
        last[:-1] = first[1:]
        first[0] = carry.sync_pending or bool(seg[0] > 0)
        has_prev = carry.prev_d is not None and not first[0]
        if has_prev:
            assert carry.prev_d is not None
            assert carry.prev_feed is not None
            assert carry.prev_lim is not None
            d = np.concatenate([carry.prev_d, mv.d], axis=1)
            feed = np.concatenate([carry.prev_feed, mv.feed])
            blk = make_blocks(d, feed, first, last, _prepend(lim, carry.prev_lim, n), True)
        else:
            blk = make_blocks(mv.d, mv.feed, first, last, lim)
        carry.prev_d = mv.d[:, -1:].copy()
        carry.prev_feed = mv.feed[-1:].copy()
        carry.prev_lim = _column(lim, n - 1)
        if carry.tail is not None:
            carry.tail.last[-1] = bool(first[0])
            blk = Blocks.concat(carry.tail, blk)
        lines = np.concatenate([carry.tail_lines, lines])
        carry.sync_pending = bool(syncs.size and syncs[-1] > mv.line[-1])
    else:
        if syncs.size:
            carry.sync_pending = True
        if carry.tail is None:
            return
        blk = carry.tail
        lines = carry.tail_lines
        if carry.sync_pending:
            blk.last[-1] = True
    if final:
        blk.last[-1] = True
    entry2, times = plan_blocks(blk, window, carry.tail_entry2)
    m = blk.size
    done = m if final else max(0, m - window)
    carry.time_s += float(times[:done].sum())
    if done:
        per = np.bincount(lines[:done] // _PROFILE_LINES, weights=times[:done])
        if per.size > carry.line_time.size:
            carry.line_time = np.concatenate(
                [carry.line_time, np.zeros(per.size - carry.line_time.size)]
            )
        carry.line_time[: per.size] += per
    if done >= m:
        carry.tail, carry.tail_entry2 = None, None
        carry.tail_lines = np.zeros(0, dtype=np.int64)
    else:
        carry.tail = blk.tail(done)
        carry.tail_entry2 = float(entry2[done])
        carry.tail_lines = lines[done:].copy()


# -- assembling the result ---------------------------------------------------------------------


def _parse_duration(text: str) -> float | None:
    """Parse PrusaSlicer's '1d 2h 3m 4s' into seconds."""
    parts = _DURATION_RE.findall(text)
    if not parts:
        return None
    mult = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(v) * mult[u] for v, u in parts)


def _first_float(text: str | None) -> float | None:
    """Return the first number of a (possibly comma-separated) config value."""
    if not text:
        return None
    try:
        return float(text.replace(";", ",").split(",")[0].strip().rstrip("m%"))
    except ValueError:
        return None


def _sum_floats(text: str | None) -> float | None:
    """Return the sum of a comma-separated list of numbers (one per extruder)."""
    if not text:
        return None
    try:
        return sum(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        return None


def _resolve_modal(t: _Table, carry: _Carry) -> None:
    """Give the bare axis-word lines the motion of the last G0/G1/G2/G3 before them."""
    kind = t.kind
    motion = (kind == _K_G0) | (kind == _K_G1) | (kind == _K_CW) | (kind == _K_CCW)
    modal = kind == _K_MODAL
    if modal.any():
        last = _ffill_index(motion)
        resolved = np.where(last >= 0, kind[np.maximum(last, 0)], carry.motion_kind)
        # An arc needs its own I/J or R; without them the line is a straight feed move.
        resolved = np.where((resolved == _K_CW) | (resolved == _K_CCW), _K_G1, resolved)
        kind[modal] = resolved[modal]
    hits = np.flatnonzero(motion)
    if hits.size:
        carry.motion_kind = int(kind[hits[-1]])


def _detect_process(ev: _Events, extruding: bool, min_cut_z: float | None, power: bool) -> str:
    """Tell 3D printing, milling and laser cutting apart."""
    if extruding or ev.heaters:
        return "fdm"
    if ev.laser_mode:
        return "laser"
    cuts_below_zero = min_cut_z is not None and min_cut_z < 0
    if ev.spindle_on and not cuts_below_zero and (ev.m4 or power):
        return "laser" if min_cut_z is None or ev.m4 else "cnc"
    if ev.spindle_on or cuts_below_zero or ev.any_arcs:
        return "cnc"
    return "unknown"


# How much of the file one step reads. Peak memory is about 40x this (the per-line table and
# the move arrays), plus the interpreter's notes. 1 MiB rather than 8: each step's arrays
# (about 35,000 lines) then stay in the CPU's caches between the ~200 array operations of a
# step, so a step costs less per byte (10 MiB file, 2-core VM, best of 6: 0.52 s in 1 MiB
# steps, 0.71 s in 2 MiB, 0.81 s in 8 MiB; 512 KiB gains nothing more), and memory is lower.
# Rechecked 2026-12-02 with the heap kept (_keep_heap): 256 KiB to 2 MiB all within the noise
# of a loaded machine (0.28-0.31 s of CPU for 10 MiB), so 1 MiB stays.
ANALYSIS_CHUNK_BYTES: Final = 1 << 20


def _chunks(
    source: str | bytes | os.PathLike[str], chunk_bytes: int
) -> tuple[str | None, int, Iterator[bytes]]:
    """Return a name for messages, the size in bytes and the chunks, each of whole lines."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        return None, len(data), _split(data, chunk_bytes)
    if isinstance(source, str) and "\n" in source:
        try:
            data = source.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise AnalysisError(f"not a text G-code file: {exc}") from exc
        return None, len(data), _split(data, chunk_bytes)
    path = Path(source)
    try:
        size = path.stat().st_size
        handle = path.open("rb")
    except OSError as exc:
        raise AnalysisError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    return path.name, size, _read_chunks(handle, path.name, chunk_bytes)


def _split(data: bytes, chunk_bytes: int) -> Iterator[bytes]:
    lo, n = 0, len(data)
    while lo < n:
        hi = data.find(b"\n", min(lo + chunk_bytes, n) - 1) + 1 if lo + chunk_bytes < n else n
        if hi <= 0:
            hi = n
        yield data[lo:hi]
        lo = hi


def _read_chunks(handle: BinaryIO, name: str, chunk_bytes: int) -> Iterator[bytes]:
    with handle:
        rest = b""
        while True:
            try:
                block = handle.read(chunk_bytes)
            except OSError as exc:
                raise AnalysisError(f"cannot read {name}: {exc.strerror or exc}") from exc
            if not block:
                if rest:
                    yield rest
                return
            cut = block.rfind(b"\n")
            if cut < 0:
                rest += block
                if len(rest) > 4 * chunk_bytes:
                    yield rest  # a huge line: the scan copes, the checks will flag it
                    rest = b""
                continue
            yield rest + block[: cut + 1]
            rest = block[cut + 1 :]


# glibc's malloc returns the top of its heap to the kernel as soon as 128 KiB or so is free
# (the threshold adapts to the largest block freed so far, a few MiB here), and serves
# blocks above its mmap threshold with fresh mappings. Each step of the analysis allocates
# and frees a few dozen MiB of arrays, so every step paid again for page faults and zeroed
# pages: 270,000 faults and 0.45 s of system time on a 100 MiB file (15 % of the CPU time).
# While an analysis runs, freed memory stays in the heap; after a file of more than one chunk
# it goes back to the kernel (malloc_trim), so a worker keeps little between analyses.
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_HEAP_KEEP_BYTES: Final = 256 << 20  # more than one analysis ever holds
_HEAP_MMAP_BYTES: Final = 32 << 20  # glibc's largest mmap threshold on 64-bit
_libc: Any = None
_heap_tuned = False


def _glibc() -> Any:
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(None)
            libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl has no mallopt)
            _libc = libc
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def _keep_heap() -> None:
    """Keep freed memory in the heap while analysing (glibc only; once per process)."""
    global _heap_tuned
    libc = _glibc()
    if libc is None or _heap_tuned:
        return
    _heap_tuned = True
    libc.mallopt(_M_MMAP_THRESHOLD, _HEAP_MMAP_BYTES)
    libc.mallopt(_M_TRIM_THRESHOLD, _HEAP_KEEP_BYTES)


def _release_heap() -> None:
    """Hand the memory an analysis freed back to the kernel."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def analyse_gcode(
    path_or_text: str | bytes | os.PathLike[str],
    *,
    machine_limits: MachineLimits | None = None,
    chunk_bytes: int = ANALYSIS_CHUNK_BYTES,
) -> GcodeAnalysis:
    """Analyse a G-code file (a path, or text containing newlines, or raw bytes).

    Raises AnalysisError for empty, binary or non-UTF-8 input. Reads the file in chunks of
    whole lines so that memory stays bounded whatever its size. CPU-bound (35 to 40 MB per
    CPU second on slicer output on a small VM): from async code use analyse_gcode_async.

    Without machine limits, the planner model (GRBL or Marlin) is chosen from the first
    chunk; if the whole file turns out to be another process, it is planned again.
    """
    _keep_heap()
    release = True
    try:
        result = _analyse_twice(path_or_text, machine_limits, chunk_bytes)
        # A file of one chunk freed little (a few MB, reused by the next analysis); trimming
        # after it cost more than the analysis of a small file saved (3.6 of 15 ms of CPU).
        release = result.size_bytes > chunk_bytes
        return result
    finally:
        if release:
            _release_heap()


def _analyse_twice(
    path_or_text: str | bytes | os.PathLike[str],
    machine_limits: MachineLimits | None,
    chunk_bytes: int,
) -> GcodeAnalysis:
    if machine_limits is not None:
        return _analyse(path_or_text, machine_limits, "machine_limits", None, chunk_bytes)
    guess: list[str] = []
    result = _analyse(path_or_text, None, "defaults", guess, chunk_bytes)
    wanted = _default_firmware(result.process)
    if guess and guess[0] != wanted:
        result = _analyse(
            path_or_text, _default_limits(result.process), "defaults", None, chunk_bytes
        )
    return result


def _default_firmware(process: str) -> str:
    return "grbl" if process in ("cnc", "laser") else "marlin"


def _default_limits(process: str) -> MachineLimits:
    if process == "laser":
        return replace(MachineLimits.grbl(), laser_mode=True)
    return MachineLimits.grbl() if process in ("cnc", "laser") else MachineLimits.marlin()


def _analyse(
    source: str | bytes | os.PathLike[str],
    limits: MachineLimits | None,
    source_label: str,
    guess: list[str] | None,
    chunk_bytes: int,
) -> GcodeAnalysis:
    name, size, chunks = _chunks(source, chunk_bytes)
    label = name or "input"
    interp = _Interpreter()
    ev = interp.ev
    carry = _Carry()
    nlines = 0
    nbytes = 0
    blank = True
    base = limits
    timeline: _LimitsTimeline | None = None
    window = 0
    limits_in_file = False
    for data in chunks:
        if not data:
            continue
        if blank and not data.isspace():
            blank = False
        _check_chunk(data, label, nbytes)
        nbytes += len(data)
        table = _scan(data)
        interp.chunk(table, data, nlines)
        interp.run(np.flatnonzero(~table.fast))
        _fold_fast_words(table, ev.words, data, nlines)
        _resolve_modal(table, carry)
        s_col = table.vals[5]
        s_vals = s_col[~np.isnan(s_col)]
        if s_vals.size:
            top = float(s_vals.max())
            carry.s_max = top if carry.s_max is None else max(carry.s_max, top)

        placed = _positions(table, ev, carry)
        rk, delta = placed.kinds, placed.delta
        feed_rows = (rk == _K_G1) | (rk == _K_CW) | (rk == _K_CCW)
        if not carry.extruding:
            carry.extruding = bool(
                np.any(feed_rows & (delta[3] > 0) & ((delta[0] != 0) | (delta[1] != 0)))
            )
        # Extrusion or a heater makes the file a print for good (_detect_process): from then
        # on, what only a CNC or laser result reads (cut depth, bounds, heights) is skipped.
        cutting = not (carry.extruding or ev.heaters)
        if cutting:
            moved_xyz = (delta[0] != 0) | (delta[1] != 0) | (delta[2] != 0)
            cut_z = placed.pos[2][feed_rows & moved_xyz]
            if cut_z.size:
                low = float(cut_z.min())
                carry.min_cut_z = low if carry.min_cut_z is None else min(carry.min_cut_z, low)
        if base is None:
            # No machine given: plan as the firmware this file's process runs on, as far as
            # its first chunk tells.
            process = _detect_process(ev, carry.extruding, carry.min_cut_z, carry.s_max is not None)
            base = _default_limits(process)
            if guess is not None:
                guess.append(base.firmware)
        if timeline is None:
            flavor = ev.config.get("gcode_flavor", "")
            timeline = _LimitsTimeline(base, 1 / 60 if flavor.startswith("reprap") else 1.0)
            window = lookahead_window(base)

        mv = _moves(placed, ev, base)
        _move_stats(mv, carry, ev.layer_markers, cutting)
        if any(w.startswith(("M201", "M203", "M204", "M205")) for _, w, _ in ev.limits):
            limits_in_file = True
        lim = timeline.per_move(ev.limits, mv.line)
        syncs = _sync_lines(table, ev, base, carry)
        # Plan now; the last blocks wait in the carry until the next chunk (or the end).
        _plan_chunk(mv, syncs, lim, nlines, carry, window, final=False)
        nlines += table.nlines
        del table, placed, mv, lim
    if blank:
        raise AnalysisError(f"empty G-code file: {label}")
    if carry.tail is not None:  # the end of the file: the last blocks stop
        _plan_chunk(
            _no_moves(), np.zeros(0, dtype=np.int64), _NO_LIMITS, nlines, carry, window, True
        )
    interp.finish()
    assert base is not None
    return _result(ev, carry, base, size, nlines, source_label, limits_in_file)


def _no_moves() -> _Moves:
    empty = np.zeros(0)
    return _Moves(np.zeros((4, 0)), np.zeros((4, 0)), empty, np.zeros(0, dtype=bool),
                  np.zeros(0, dtype=np.int64))  # fmt: skip


_NO_LIMITS: Final = PlanLimits.constant(MachineLimits())


def _check_chunk(data: bytes, label: str, offset: int) -> None:
    """Refuse binary or non-UTF-8 content with a clear message (offset: bytes before)."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise AnalysisError(
            f"not a text G-code file: {label} has a NUL byte at offset {offset + nul}"
        )
    if data.isascii():
        return
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AnalysisError(
            f"not a text G-code file: {label} is not UTF-8 (byte {offset + exc.start})"
        ) from exc


def _sync_lines(table: _Table, ev: _Events, lim: MachineLimits, carry: _Carry) -> I64:
    """Return the lines of a chunk that empty the planner, in order."""
    parts = [np.array(ev.syncs, dtype=np.int64)]
    # G92 without E empties the planner in PrusaSlicer's model; the scan parsed most of them.
    parts.append(np.flatnonzero((table.kind == _K_G92) & np.isnan(table.vals[3])))
    if lim.firmware == "grbl":
        parts.append(np.array(ev.grbl_syncs, dtype=np.int64))
        # A new S with the spindle on waits for the planner, except, in laser mode, on a
        # motion line (M4 dynamic power changes the power with the speed, not the motion).
        s_col = table.vals[5]
        has_s = np.flatnonzero(~np.isnan(s_col))
        if has_s.size:
            values = s_col[has_s]
            before = np.empty(values.size)
            before[0] = carry.s_prev
            before[1:] = values[:-1]
            changed = has_s[values != before]
            if ev.spindle:
                at = np.array([ln for ln, _ in ev.spindle], dtype=np.int64)
                state = np.array([carry.spindle_on] + [on for _, on in ev.spindle])
                on = state[np.searchsorted(at, changed, side="left")]
            else:
                on = np.full(changed.size, carry.spindle_on)
            changed = changed[on]
            if lim.laser_mode or ev.laser_mode:
                moving = table.kind[changed] != _K_NONE
                moving &= ~np.isnan(table.vals[:3, changed]).all(axis=0)
                changed = changed[~moving]
            parts.append(changed)
            carry.s_prev = float(values[-1])
        if ev.spindle:
            carry.spindle_on = ev.spindle[-1][1]
    return np.unique(np.concatenate(parts))


def _move_stats(mv: _Moves, carry: _Carry, layer_markers: int, cutting: bool) -> None:
    """Add a chunk's moves to the running totals (filament, bounds, lengths, layers).

    Without `cutting` (the file is a print), the bounds and heights of cutting moves are left.
    """
    n = mv.d.shape[1]
    if not n:
        return
    carry.moves += n
    dx, dy, dz, de = mv.d
    # Filament: the high-water mark of the extruder, so retract/unretract pairs net out.
    cs = np.cumsum(de)
    carry.e_high = max(carry.e_high, carry.e_sum + float(cs.max()))
    carry.e_sum += float(cs[-1])
    dxy = (dx != 0) | (dy != 0)
    xyz_len = np.sqrt(dx * dx + dy * dy + dz * dz)
    carry.xyz_len += float(xyz_len.sum())
    fdm_work = (de > 0) & dxy
    carry.extrude_len += float(xyz_len[fdm_work].sum())
    carry.bbox_fdm = _grow_bbox(carry.bbox_fdm, mv, fdm_work)
    if not layer_markers:  # slicers mark layers; count distinct heights only without marks
        carry.z_fdm = np.union1d(carry.z_fdm, np.round(mv.end[2][fdm_work], 4))
    if cutting:
        cut_work = ~mv.rapid & (dxy | (dz != 0))
        carry.bbox_cut = _grow_bbox(carry.bbox_cut, mv, cut_work)
        if not layer_markers:
            carry.z_cut = np.union1d(carry.z_cut, np.round(mv.end[2][cut_work], 4))


def _grow_bbox(box: list[float] | None, mv: _Moves, work: Bools) -> list[float] | None:
    if not work.any():
        return box
    which = np.flatnonzero(work)
    ends = np.take(mv.end[:3], which, axis=1)
    starts = ends - np.take(mv.d[:3], which, axis=1)
    lo = np.minimum(starts.min(axis=1), ends.min(axis=1)).tolist()
    hi = np.maximum(starts.max(axis=1), ends.max(axis=1)).tolist()
    if box is None:
        return [*lo, *hi]
    return [min(box[k], lo[k]) for k in range(3)] + [max(box[3 + k], hi[k]) for k in range(3)]


def _result(
    ev: _Events,
    carry: _Carry,
    base: MachineLimits,
    size: int,
    nlines: int,
    source: str,
    limits_in_file: bool,
) -> GcodeAnalysis:
    process = _detect_process(ev, carry.extruding, carry.min_cut_z, carry.s_max is not None)
    fdm = process == "fdm"
    filament_mm = max(0.0, carry.e_high)
    diameter = _first_float(ev.config.get("filament_diameter")) or DEFAULT_FILAMENT_DIAMETER_MM
    density = _first_float(ev.config.get("filament_density")) or DEFAULT_FILAMENT_DENSITY_G_CM3
    filament_g = filament_mm * math.pi * (diameter / 2) ** 2 * density / 1000.0
    box = carry.bbox_fdm if fdm else carry.bbox_cut
    bbox = BoundingBox(*(round(float(v), 4) for v in box)) if box is not None else None
    extrude_len = carry.extrude_len if fdm else 0.0
    travel_len = carry.xyz_len - extrude_len
    layers = ev.layer_markers or int((carry.z_fdm if fdm else carry.z_cut).size)

    if limits_in_file:
        source = "file"
    grbl = base.firmware == "grbl"
    # Marlin's G4 P is milliseconds; GRBL's P is seconds.
    dwell = ev.dwell_s + (ev.dwell_p if grbl else ev.dwell_p / 1000.0)
    estimate = carry.time_s + dwell

    slicer_time = _parse_duration(ev.config.get("estimated printing time (normal mode)", ""))
    if slicer_time is None and "TIME" in ev.header:
        slicer_time = _first_float(ev.header["TIME"])
    slicer_mm = _sum_floats(ev.config.get("filament used [mm]"))
    if slicer_mm is None and "Filament used" in ev.header:
        meters = _first_float(ev.header["Filament used"])
        slicer_mm = None if meters is None else meters * 1000.0
    slicer_g = _sum_floats(ev.config.get("filament used [g]"))

    metadata: dict[str, str] = {
        k: ev.config[k] for k in _METADATA_KEYS if ev.config.get(k, "") not in ("", '""')
    }
    for key, target in _CURA_KEYS.items():
        if key in ev.header and target not in metadata:
            metadata[target] = ev.header[key]

    units = "mixed" if ev.inch_seen and ev.mm_seen else ("inch" if ev.inch_seen else "mm")
    notes = sorted(ev.notes)
    if source == "defaults" and carry.moves:
        kind = "GRBL" if grbl else "Marlin"
        notes.append(f"time assumes typical {kind} limits: pass the machine's limits to refine it")
    if ev.untimed:
        notes.append(
            "not timed (duration unknown): "
            + ", ".join(f"{k} x{v}" for k, v in sorted(ev.untimed.items()))
        )
    return GcodeAnalysis(
        process=process,
        line_count=nlines,
        size_bytes=size,
        units=units,
        estimated_time_s=round(estimate, 2),
        slicer_estimated_time_s=slicer_time,
        filament_mm=round(filament_mm, 3),
        filament_g=round(filament_g, 3),
        slicer_filament_mm=slicer_mm,
        slicer_filament_g=slicer_g,
        bbox_mm=bbox,
        layers=layers,
        max_hotend_c=ev.max_hotend,
        max_bed_c=ev.max_bed,
        firmware_commands=ev.firmware,
        **_word_fields(ev.words),
        slicer=ev.slicer,
        slicer_version=ev.slicer_version,
        metadata=metadata,
        thumbnails=ev.thumbnails,
        move_count=carry.moves,
        extrude_distance_mm=round(extrude_len, 3),
        travel_distance_mm=round(travel_len, 3),
        max_spindle_s=carry.s_max,
        tool_changes=ev.tool_changes,
        untimed_commands=dict(sorted(ev.untimed.items())),
        limits_source=source,
        notes=notes,
        slicer_config=ev.config,
        time_profile=_time_profile(carry.line_time, nlines),
    )


def _time_profile(line_time: F64, nlines: int) -> list[float]:
    """Return the planned time done at 0..100 % of the lines (linear within a bucket)."""
    if nlines <= 0 or not line_time.size or line_time.sum() <= 0:
        return []
    cum = np.concatenate([[0.0], np.cumsum(line_time)])
    at = np.arange(cum.size, dtype=np.float64) * _PROFILE_LINES
    at[-1] = max(at[-1], float(nlines))
    pct = np.linspace(0.0, float(nlines), 101)
    return [round(float(v), 1) for v in np.interp(pct, np.minimum(at, nlines), cum)]


# -- async entry point -----------------------------------------------------------------------

_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _fold_fast_words(t: _Table, words: _Words, data: bytes, offset: int) -> None:
    """Add one chunk's fast-path G0/G1/G92 lines (parsed in bulk) to the words the
    interpreter saw; `offset` is the number of lines in the chunks before this one."""
    for name, kind in (("G0", _K_G0), ("G1", _K_G1), ("G92", _K_G92)):
        rows = np.flatnonzero(t.fast & (t.kind == kind))
        if rows.size:
            line = offset + int(rows[0]) + 1
            words.counts[name] = words.counts.get(name, 0) + int(rows.size)
            words.first[name] = min(words.first.get(name, line), line)
    fast_rows = np.flatnonzero(t.fast & (t.kind != _K_NONE))
    if fast_rows.size:
        lengths = t.ends[fast_rows] - t.starts[fast_rows]
        k = int(np.argmax(lengths))
        if words.longest is None or int(lengths[k]) > words.longest[1]:
            row = int(fast_rows[k])
            text = data[int(t.starts[row]) : int(t.ends[row])].decode("utf-8", "replace").strip()
            if words.longest is None or len(text) > words.longest[1]:
                words.longest = (offset + row + 1, len(text), text[:120])


def _word_fields(words: _Words) -> dict[str, Any]:
    """Return what the command checks read (microfactory.analysis.commands)."""
    return {
        "commands": dict(words.counts),
        "command_lines": dict(words.first),
        "unparsed_lines": words.unparsed,
        "unparsed_examples": list(words.unparsed_examples),
        "longest_line": words.longest,
        "extended_commands": dict(words.extended),
        "extended_lines": dict(words.extended_first),
    }


def _get_pool() -> ProcessPoolExecutor:
    """Return the shared worker pool, starting it on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            # spawn, not fork: forking a process that runs an event loop and threads is unsafe.
            _pool = ProcessPoolExecutor(
                max_workers=max(1, min(2, os.cpu_count() or 1)),
                mp_context=multiprocessing.get_context("spawn"),
                # Workers end when the server does, even after SIGKILL (no orphans).
                initializer=die_with_parent,
                initargs=(os.getpid(),),
            )
        return _pool


def shutdown_analysis_pool() -> None:
    """Stop the worker processes (call on application shutdown)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


async def analyse_gcode_async(
    path_or_text: str | bytes | os.PathLike[str],
    *,
    machine_limits: MachineLimits | None = None,
    executor: Executor | None = None,
) -> GcodeAnalysis:
    """Analyse in a worker process so the event loop never blocks.

    Pass a path rather than text where possible: only the path crosses the process boundary.
    If the pool has died (a worker was killed), it is replaced and the call retried once in a
    thread.
    """
    if isinstance(path_or_text, os.PathLike):
        path_or_text = os.fspath(path_or_text)
    job = partial(analyse_gcode, path_or_text, machine_limits=machine_limits)
    loop = asyncio.get_running_loop()
    if executor is not None:
        return await loop.run_in_executor(executor, job)
    try:
        return await loop.run_in_executor(_get_pool(), job)
    except BrokenProcessPool:
        shutdown_analysis_pool()
        return await asyncio.to_thread(job)
