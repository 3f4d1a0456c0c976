"""Analysing a large G-code file reads it in bounded chunks: memory does not grow with it.

Each file is analysed in a fresh subprocess that reports its own peak RSS
(VmHWM in /proc/self/status), so nothing else the test process holds is counted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.big_gcode import write_big_gcode

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "tests" / "data" / "gcode" / "fdm" / "bracket.gcode"
LIMIT_MB = 512

# What an upload goes through: the text check (counting command lines), then the analysis.
CHILD = """
import json, sys
from pathlib import Path
from microfactory.analysis import analyse_gcode
from microfactory.files import check_gcode_file
commands = check_gcode_file(Path(sys.argv[1]))
a = analyse_gcode(sys.argv[1])
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a child forked
# from a large test process would report the parent's size (1.1 GB late in the suite).
hwm = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
peak = int(hwm.split()[1]) / 1024  # kB -> MB
print(json.dumps({"peak_mb": peak, "lines": a.line_count, "commands": commands}))
"""


# What the server does: the analysis runs in its worker pool; then how much the worker keeps.
CHILD_POOL = """
import asyncio, json, sys
from pathlib import Path
from microfactory.analysis import gcode
async def main():
    a = await gcode.analyse_gcode_async(sys.argv[1])
    kept = []
    for pid in list(gcode._pool._processes):  # the pool's live workers
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        rss = next(l for l in status if l.startswith("VmRSS"))
        kept.append(int(rss.split()[1]) / 1024)  # kB -> MB
    gcode.shutdown_analysis_pool()
    print(json.dumps({"lines": a.line_count, "worker_rss_mb": kept}))
asyncio.run(main())
"""


def peak_of(path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


@pytest.mark.timeout(900)
def test_peak_memory_stays_bounded_whatever_the_file_size(tmp_path: Path) -> None:
    small, large = tmp_path / "small.gcode", tmp_path / "large.gcode"
    write_big_gcode(SAMPLE, small, 16 << 20)
    write_big_gcode(SAMPLE, large, 200 << 20)  # the upload limit
    a, b = peak_of(small), peak_of(large)
    assert b["lines"] > 12 * a["lines"]
    assert b["commands"] > 12 * a["commands"]
    assert b["peak_mb"] < LIMIT_MB, b
    # Twelve times the file, about the same memory: only a chunk is held at a time.
    assert b["peak_mb"] < a["peak_mb"] + 100, (a, b)
    # The server's analysis worker does not keep the file's worth of memory afterwards (it
    # once kept 1.2 GB after a 200 MiB upload).
    out = subprocess.run(
        [sys.executable, "-c", CHILD_POOL, str(large)],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    pool = json.loads(out.stdout)
    assert pool["lines"] == b["lines"]
    assert pool["worker_rss_mb"], "the analysis ran in no worker"
    assert max(pool["worker_rss_mb"]) < LIMIT_MB / 2, pool


def test_the_streamed_text_check_counts_as_the_whole_file_check(tmp_path: Path) -> None:
    from drivers.base import clean_lines
    from microfactory import files

    text = SAMPLE.read_text().replace("\n", "\r\n", 500) + "; tail without newline\nG1 X1"
    path = tmp_path / "mixed.gcode"
    path.write_text(text, newline="")
    expected = len(clean_lines(text.splitlines()))
    old = files._CHECK_CHUNK
    try:
        files._CHECK_CHUNK = 1000  # many slices, lines cut at every boundary
        assert files.check_gcode_file(path) == expected
    finally:
        files._CHECK_CHUNK = old
    assert files.check_gcode_file(path) == expected
