"""What a machine's firmware accepts of a program, checked when a job is created or assigned.

A program that a driver would refuse at dispatch is refused earlier, with the line and the
rule: when it is submitted (if no machine of the shop could take it) and when it is given to
a machine (for that machine). The facts are the firmwares', mirrored from the drivers (a unit
test keeps them equal to drivers.grbl's):

- GRBL keeps 80 characters of a line, 79 significant once spaces are removed
  (LINE_BUFFER_SIZE 80), and treats ? ! ~ as real-time commands anywhere in a line.
- Marlin keeps 96 bytes of a command (MAX_CMD_SIZE 96, with its terminating null), and the
  driver sends every line as `N<number> <line>*<checksum>`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

GRBL_MAX_LINE_CHARS = 79  # drivers.grbl.MAX_LINE_CHARS
GRBL_REALTIME = frozenset("?!~")
MARLIN_MAX_CMD_SIZE = 96

GRBL_DRIVERS = frozenset({"grbl", "sim-grbl"})
MARLIN_DRIVERS = frozenset({"marlin", "sim-marlin"})


def line_stats(lines: Iterable[str]) -> dict[str, Any]:
    """Summarise a program's lines for the firmware checks (kept in the job's analysis)."""
    longest = longest_at = compact_longest = compact_at = count = 0
    realtime_at: int | None = None
    non_ascii_at: int | None = None
    for number, line in enumerate(lines, start=1):
        count = number
        if len(line) > longest:
            longest, longest_at = len(line), number
        compact = len("".join(line.split()))
        if compact > compact_longest:
            compact_longest, compact_at = compact, number
        if realtime_at is None and any(c in GRBL_REALTIME for c in line):
            realtime_at = number
        if non_ascii_at is None and any(ord(c) < 0x20 or ord(c) > 0x7E for c in line):
            non_ascii_at = number
    return {
        "count": count,
        "longest": longest,
        "longest_at": longest_at,
        "longest_compact": compact_longest,
        "longest_compact_at": compact_at,
        "realtime_at": realtime_at,
        "non_ascii_at": non_ascii_at,
    }


def marlin_max_line(lines_total: int) -> int:
    """Return the longest line Marlin takes with our line number and checksum around it."""
    # "N<n> " + line + "*<0-255>" + the terminating null, within MAX_CMD_SIZE; the driver
    # numbers lines from a few commands before the program, hence the margin of 10.
    frame = len(f"N{lines_total + 10} ") + len("*255") + 1
    return MARLIN_MAX_CMD_SIZE - frame


def program_problem(analysis: Mapping[str, Any] | None, driver: str) -> str | None:
    """Return why a machine with this driver cannot take the program, or None.

    Programs analysed before these checks existed carry no line statistics: they pass here
    and the driver still refuses them at dispatch.
    """
    stats = (analysis or {}).get("line_stats")
    if not stats:
        return None
    if driver in GRBL_DRIVERS:
        if stats.get("realtime_at"):
            return (
                f"line {stats['realtime_at']} holds ? ! or ~, which GRBL takes as real-time "
                "commands"
            )
        if stats.get("non_ascii_at"):
            return f"line {stats['non_ascii_at']} holds a character GRBL cannot take"
        if stats["longest_compact"] > GRBL_MAX_LINE_CHARS:
            return (
                f"line {stats['longest_compact_at']} is {stats['longest_compact']} characters "
                f"without spaces, longer than GRBL's {GRBL_MAX_LINE_CHARS}-character line buffer"
            )
    elif driver in MARLIN_DRIVERS:
        limit = marlin_max_line(int(stats.get("count") or 0))
        if stats["longest"] > limit:
            return (
                f"line {stats['longest_at']} is {stats['longest']} characters, longer than the "
                f"{limit} that fit Marlin's {MARLIN_MAX_CMD_SIZE}-byte command buffer with its "
                "line number and checksum"
            )
    return None
