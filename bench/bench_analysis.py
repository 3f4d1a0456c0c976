"""Benchmark the G-code analyser against OctoPrint's gcodeInterpreter on the FDM samples.

For each sample: parse speed (MB/s) of ours and of OctoPrint 1.11's
``gcodeInterpreter.gcode().load()`` (run in its own virtualenv as a subprocess, timing only
``load()`` inside it), and how far each time estimate is from PrusaSlicer's embedded one.
Writes a markdown report to docs/bench-analysis.md.

    .venv/bin/python bench/bench_analysis.py [--runs 7] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from microfactory.analysis import analyse_gcode

REPO = Path(__file__).resolve().parent.parent
OCTOPRINT_PYTHON = (
    Path(os.environ.get("MICROFACTORY_OCTOPRINT_VENV", str(REPO / ".octoprint-venv")))
    / "bin"
    / "python"
)
REPORT = REPO / "docs" / "bench-analysis.md"

# Runs inside OctoPrint's virtualenv: times load() only, and reports its estimate.
OCTOPRINT_SCRIPT = """
import json, sys, time
import octoprint
from octoprint.util.gcodeInterpreter import gcode
runs = int(sys.argv[1])
out = {"version": octoprint.__version__, "files": {}}
for path in sys.argv[2:]:
    times = []
    for _ in range(runs):
        g = gcode()
        t = time.perf_counter()
        g.load(path)
        times.append(time.perf_counter() - t)
    out["files"][path] = {
        "times": times,
        "estimate_s": g.totalMoveTimeMinute * 60,
        "filament_mm": sum(g.extrusionAmount),
    }
print(json.dumps(out))
"""


def fdm_samples() -> list[Path]:
    """Return the committed FDM samples plus the generated vase (tests/samples.py)."""
    sys.path.insert(0, str(REPO))
    from tests import samples

    return [*sorted((samples.GCODE / "fdm").glob("*.gcode")), samples.vase_gcode()]


@dataclass
class Row:
    name: str
    size: int
    ours: list[float]
    theirs: list[float]
    slicer_s: float
    ours_s: float
    theirs_s: float


def time_ours(path: Path, runs: int) -> tuple[list[float], float, float | None]:
    """Return run times, our estimate and the slicer's embedded estimate."""
    times = []
    result = None
    for _ in range(runs):
        start = time.perf_counter()
        result = analyse_gcode(path)
        times.append(time.perf_counter() - start)
    assert result is not None
    return times, result.estimated_time_s, result.slicer_estimated_time_s


def time_octoprint(paths: list[Path], runs: int) -> dict[str, object]:
    """Run OctoPrint's analysis in its own virtualenv and return its timings."""
    if not OCTOPRINT_PYTHON.exists():
        raise SystemExit(f"OctoPrint's virtualenv not found at {OCTOPRINT_PYTHON}")
    proc = subprocess.run(
        [str(OCTOPRINT_PYTHON), "-c", OCTOPRINT_SCRIPT, str(runs), *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def mb_s(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def fmt_time(seconds: float) -> str:
    minutes, sec = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {sec:02d}s" if hours else f"{minutes}m {sec:02d}s"


def render(rows: list[Row], octoprint_version: str, runs: int, load: tuple[float, float]) -> str:
    """Return the markdown report."""
    nproc = os.cpu_count()
    lines = [
        "# G-code analysis benchmark",
        "",
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {nproc} CPUs (nproc), {platform.machine()} (uname -m), "
        f"{platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, NumPy {np.__version__}; "
        f"OctoPrint {octoprint_version} in its own virtualenv (Python subprocess)",
        f"- Load average (1 min) {load[0]:.2f} at the start, {load[1]:.2f} at the end: the "
        "machine is shared, which is why median and best runs differ.",
        f"- {runs} rounds after a warm-up; each round runs OctoPrint then ours on every file, "
        "so both see the same machine load. Speeds use the median run (best run in brackets).",
        "- OctoPrint: time of `gcodeInterpreter.gcode().load(path)` only, measured inside its "
        "process. Ours: the whole `analyse_gcode(path)`, file read included.",
        "- Estimate error is against PrusaSlicer's embedded "
        "`; estimated printing time (normal mode)`.",
        "",
        "| file | size | ours MB/s | OctoPrint MB/s | speed-up | PrusaSlicer | ours | OctoPrint |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        om, ob = statistics.median(r.ours), min(r.ours)
        tm, tb = statistics.median(r.theirs), min(r.theirs)
        ours_err = (r.ours_s / r.slicer_s - 1) * 100
        theirs_err = (r.theirs_s / r.slicer_s - 1) * 100
        lines.append(
            f"| {r.name} | {r.size / 1e6:.2f} MB "
            f"| {mb_s(r.size, om):.1f} ({mb_s(r.size, ob):.1f}) "
            f"| {mb_s(r.size, tm):.2f} ({mb_s(r.size, tb):.2f}) "
            f"| {tm / om:.1f}x ({tb / ob:.1f}x) "
            f"| {fmt_time(r.slicer_s)} "
            f"| {fmt_time(r.ours_s)} ({ours_err:+.2f} %) "
            f"| {fmt_time(r.theirs_s)} ({theirs_err:+.1f} %) |"
        )
    lines += [
        "",
        "How: the plain `G0`/`G1`/`G92` lines (83 to 97 % of the lines in these files) are "
        "found and their "
        "numbers parsed in one vectorised pass over the bytes (eight digits per uint64 "
        "operation); other lines go through a small interpreter. The planner follows "
        "PrusaSlicer's model of Marlin (per-axis limits, classic jerk junctions, reverse and "
        "forward passes) but runs the passes as min-plus scans over whole arrays; the reverse "
        "pass looks ahead only as far as the firmware's 16-block buffer holds "
        "(`drivers/planner.py`). Files are read in 1 MiB chunks of whole lines, so memory stays "
        "bounded (see [bench-planner.md](bench-planner.md) for 10-200 MiB files).",
        "",
        f"Reproduce: `.venv/bin/python bench/bench_analysis.py --runs {runs}`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    paths = fdm_samples()
    ours: dict[Path, list[float]] = {p: [] for p in paths}
    theirs: dict[Path, list[float]] = {p: [] for p in paths}
    estimates: dict[Path, tuple[float, float | None]] = {}
    octo_estimate: dict[Path, float] = {}
    version = "?"
    load_start = os.getloadavg()[0]
    for p in paths:
        analyse_gcode(p)  # warm-up: imports, page cache
    # Alternate the two tools round by round so both see the same machine load.
    for _ in range(args.runs):
        octo = time_octoprint(paths, 1)
        version = str(octo["version"])
        files = octo["files"]
        assert isinstance(files, dict)
        for p in paths:
            theirs[p] += files[str(p)]["times"]
            octo_estimate[p] = files[str(p)]["estimate_s"]
            times, ours_s, slicer_s = time_ours(p, 1)
            ours[p] += times
            estimates[p] = (ours_s, slicer_s)
    rows = []
    for p in paths:
        ours_s, slicer_s = estimates[p]
        if slicer_s is None:
            raise SystemExit(f"{p.name} has no PrusaSlicer estimate")
        rows.append(
            Row(p.name, p.stat().st_size, ours[p], theirs[p], slicer_s, ours_s, octo_estimate[p])
        )
    report = render(rows, version, args.runs, (load_start, os.getloadavg()[0]))
    print(report)
    if not args.no_write:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(report)
        print(f"wrote {REPORT.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
