"""A clone from the public repository has nothing beside it: no code may read outside it."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The reference folder that sits beside the repository on a developer's machine. Its name is
# put together here so that this file, which looks for it, does not itself mention it.
SIBLING = "sha" + "red"
# `REPO.parent / "<sibling>"`, "../<sibling>", `parents[N] / "<sibling>"`: ways of reaching it.
OUTSIDE = re.compile(
    rf"""\.\./{SIBLING}\b|parent\s*/\s*["']{SIBLING}["']|\]\s*/\s*["']{SIBLING}["']"""
)


def test_no_code_reads_a_folder_beside_the_repository() -> None:
    offenders = []
    for top in ("microfactory", "drivers", "tests", "bench", "scripts", "migrations", ".ci"):
        for path in (REPO / top).rglob("*"):
            if path.suffix not in {".py", ".sh", ""} or not path.is_file():
                continue
            if path == Path(__file__).resolve():
                continue
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if OUTSIDE.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert offenders == [], "copy what you need into tests/data instead:\n" + "\n".join(offenders)


def test_the_samples_the_tests_read_are_committed() -> None:
    from tests import samples

    for parts in (
        ("gcode", "fdm", "cube.gcode"),
        ("gcode", "fdm", "bracket.gcode"),
        ("gcode", "cnc", "pocket-and-contour.nc"),
        ("gcode", "laser", "laser-spiral.nc"),
        ("designs", "l-bracket", "l-bracket.scad"),
        ("profiles", "prusaslicer-fdm-220.ini"),
    ):
        assert samples.data_file(*parts).stat().st_size > 0
