"""Firmware limits on programs, checked before a job reaches a machine."""

from __future__ import annotations

from drivers import grbl
from microfactory.machines import limits


def test_the_limits_mirror_the_drivers() -> None:
    assert limits.GRBL_MAX_LINE_CHARS == grbl.MAX_LINE_CHARS
    line = "g1 x10 y10"
    assert len("".join(line.split())) == len(grbl.compact(line))


def test_a_line_over_grbls_buffer_is_named_with_its_number() -> None:
    ok = "G1X1.5Y2"
    long = "G1 X" + "1" * 40 + " Y" + "2" * 40  # 84 characters without its spaces
    stats = limits.line_stats([ok, ok, long])
    problem = limits.program_problem({"line_stats": stats}, "grbl")
    assert problem == (
        "line 3 is 84 characters without spaces, longer than GRBL's 79-character line buffer"
    )
    assert limits.program_problem({"line_stats": stats}, "sim-grbl") == problem
    # Spaces do not count for GRBL: 79 significant characters spread with spaces pass.
    spaced = " ".join("G1X" + "1" * 76)
    assert limits.program_problem({"line_stats": limits.line_stats([spaced])}, "grbl") is None


def test_grbl_refuses_real_time_characters_in_a_program() -> None:
    stats = limits.line_stats(["G0 X0", "M117 ready?"])
    problem = limits.program_problem({"line_stats": stats}, "grbl")
    assert problem is not None
    assert problem.startswith("line 2 holds ? ! or ~")
    assert limits.program_problem({"line_stats": stats}, "marlin") is None


def test_marlin_counts_the_line_number_and_checksum() -> None:
    limit = limits.marlin_max_line(1000)  # "N1010 " + line + "*255" + NUL <= 96
    assert limit == 96 - 6 - 4 - 1
    fits = "M117 " + "x" * (limit - 5)
    over = fits + "x"
    assert (
        limits.program_problem({"line_stats": limits.line_stats([fits] * 1000)}, "marlin") is None
    )
    problem = limits.program_problem({"line_stats": limits.line_stats([over] * 1000)}, "marlin")
    assert problem is not None
    assert "line 1 is" in problem
    assert "Marlin's 96-byte command buffer" in problem


def test_other_drivers_and_old_analyses_pass() -> None:
    stats = limits.line_stats(["G1 X" + "1" * 200])
    assert limits.program_problem({"line_stats": stats}, "octoprint") is None  # OctoPrint streams
    assert limits.program_problem({}, "grbl") is None  # analysed before the checks existed
