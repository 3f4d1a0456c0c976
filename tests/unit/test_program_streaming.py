"""A job's program is streamed from its file, not loaded whole: same lines, bounded memory.

`Program.from_file` used to read the whole file and keep every line (a 200 MiB job held
about 800 MB). Its lines are now read a block at a time. The peak is measured in a fresh
subprocess by VmHWM in /proc/self/status (Linux carries ru_maxrss across exec).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.big_gcode import write_big_gcode
from drivers.base import FileLines, Program

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "data" / "gcode" / "fdm" / "bracket.gcode"

TRICKY = (
    "; header comment\n"
    "G28 ; home\n"
    "\n"
    "G1 X1 (a comment) Y2\r\n"
    "M104 S200\rM140 S60\rG1 X3\n"  # old Mac line ends inside one newline-ended piece
    "%\n"
    "   \n"
    "(only a comment)\n"
    "G1 X4 Y5 E0.1\n"
    "G1 X5\rG1 X6\rG1 X7\rG1 X8\n"
    "M84"  # no final newline
)


class _SmallBlocks(FileLines):
    BLOCK = 3
    CACHED = 1


def test_file_lines_are_the_lines_from_text(tmp_path: Path) -> None:
    path = tmp_path / "tricky.gcode"
    path.write_bytes(TRICKY.encode())
    expected = list(Program.from_text("t", TRICKY).lines)
    assert len(expected) == 11
    for lines in (Program.from_file(path).lines, _SmallBlocks(path)):
        assert len(lines) == len(expected)
        assert list(lines) == expected
        assert [lines[i] for i in range(len(lines))] == expected
        assert [lines[i] for i in reversed(range(len(lines)))] == expected[::-1]
        assert lines[-1] == "M84"
        assert lines[2:7] == expected[2:7]
        with pytest.raises(IndexError):
            lines[len(expected)]
    program = Program.from_file(path, "Tricky")
    assert program.name == "Tricky"
    assert program.source == path


def test_an_empty_or_comment_only_file_has_no_lines(tmp_path: Path) -> None:
    path = tmp_path / "empty.gcode"
    path.write_bytes(b"; nothing\n\n")
    assert len(Program.from_file(path).lines) == 0
    assert list(Program.from_file(path).lines) == []


CHILD = """
import json, sys
from pathlib import Path
from drivers.base import Program

def hwm_mb():
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(l for l in status if l.startswith("VmHWM")).split()[1]) / 1024

before = hwm_mb()
program = Program.from_file(Path(sys.argv[1]))
lines = program.lines
n = len(lines)
# As the Marlin driver does: index forward, resending a few recent lines now and then.
chars = 0
for i in range(n):
    chars += len(lines[i])
    if i % 5000 == 4999:
        chars += len(lines[i - 40])
print(json.dumps({"before_mb": before, "peak_mb": hwm_mb(), "lines": n, "chars": chars}))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_streaming_a_large_program_holds_only_a_few_blocks(tmp_path: Path) -> None:
    path = tmp_path / "big.gcode"
    size = write_big_gcode(SAMPLE, path, 32 << 20)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result = json.loads(out.stdout)
    assert result["lines"] > 500_000
    assert result["chars"] > size // 2
    # Loaded whole, the program took several times the file (the text, then a str per
    # line): 145 MB more for this 32 MiB file. Streamed: a 1 MiB read slice, its pieces and
    # a few 4,096-line blocks, about 10 MB whatever the size.
    grown = result["peak_mb"] - result["before_mb"]
    assert grown < 24, result
