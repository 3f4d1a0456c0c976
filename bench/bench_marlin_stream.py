"""Benchmark: stream vase.gcode to OctoPrint's VirtualPrinter as shipped, errors and all.

    .venv/bin/python bench/bench_marlin_stream.py [--lines 30000] [--out docs/bench-marlin.md]

VirtualPrinter runs exactly as shipped, with its default simulated errors (100:resend,
105:resend_with_timeout, 110:missing_lineno, 115:checksum_mismatch), its move time disabled
(--motion-scale 0) so that the link and the protocol are the limit. Each configuration runs
with two hosts in the same run:
- `one-in-flight`: a minimal host that sends a line and waits for its ok, rewinds to the line
  a `Resend:` names and sends an unanswered line again after 3 s (OctoPrint's way);
- `marlin`: the driver (4 lines in flight by default, adaptive window, resend bursts).
Conditions: the replies with their message boundaries (`--terminate`: a newline after each,
as OctoPrint's serial layer hands them over), the same at 0.1 % and 1 % of the host's lines
damaged on the link, 2 ms of reply latency (a USB-serial adapter), and the replies exactly
as VirtualPrinter writes them to a byte stream (most without a newline). Every run checks
that what VirtualPrinter executed is the program, line for line.

M109/M190 are left out of the program: VirtualPrinter heats in real time, which measures
nothing about the link.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from drivers.base import EventKind, Program  # noqa: E402
from drivers.marlin import MarlinDriver, format_line, parse_reply, split_replies  # noqa: E402
from drivers.serial_io import AsyncSerialLink  # noqa: E402

BRIDGE = REPO / "tests" / "peers" / "virtual_printer_bridge.py"
# lines the hosts send on their own: handshake, M503, polls and the driver's M110 anchors
OWN = re.compile(r"^(M105|M110 N\d+|M115|M155 S\d+|M503)$")


@dataclass
class Result:
    """One streaming run."""

    host: str
    mode: str
    lines: int
    seconds: float
    exact: bool | None = None
    outcome: str = "finished"
    note: str = ""

    @property
    def rate(self) -> float:
        """Lines per second."""
        return self.lines / self.seconds if self.seconds else 0.0


class Peer:
    """A VirtualPrinter bridge process."""

    def __init__(self, python: Path, workdir: Path, *args: str) -> None:
        self.record = workdir / f"executed-{time.monotonic_ns()}.txt"
        self.stats = self.record.with_suffix(".json")
        self.proc = subprocess.Popen(
            [
                *(str(python), str(BRIDGE), "--motion-scale", "0", "--record", str(self.record)),
                *("--stats", str(self.stats), *args),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.path = self.proc.stdout.readline().strip()
        if not self.path.startswith("/dev/"):
            raise RuntimeError("the VirtualPrinter bridge did not start")

    def executed(self) -> list[str]:
        """Return the program lines VirtualPrinter ran (handshake and polls left out)."""
        lines = self.record.read_text(encoding="utf-8").splitlines()
        return [line for line in lines if not OWN.match(line)]

    def close(self) -> dict[str, int]:
        """Stop the bridge and return its statistics."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads(self.stats.read_text()))
        return {}


async def one_in_flight(path: str, lines: tuple[str, ...]) -> tuple[float, str]:
    """Stream as OctoPrint does, one line in flight; return the seconds and the outcome.

    It rewinds to the line a `Resend:` names (the ok after it belongs to the rejected line)
    and sends the current line again when 3 s pass without an answer.
    """
    link = AsyncSerialLink(path)
    await link.open()
    replies: list[str] = []

    async def next_reply(within: float) -> str | None:
        end = time.monotonic() + within
        while not replies:
            if time.monotonic() > end:
                return None
            try:
                text = await link.readline(0.005)
            except TimeoutError:
                partial = link.pending_partial()
                if not re.search(rb"(ok|wait|Resend:\s*\d+)$", partial):
                    continue
                text = link.take_partial().decode()
            replies.extend(p for p in split_replies(text) if p.strip())
        return replies.pop(0)

    try:
        link.write((format_line(0, "M110 N0") + "\n").encode())
        while (first := await next_reply(10)) is not None and not first.startswith("ok"):
            pass
        started = time.perf_counter()
        n, resends, timeouts = 1, 0, 0
        while n <= len(lines):
            link.write((format_line(n, lines[n - 1]) + "\n").encode())
            deadline = time.monotonic() + 3.0
            while True:
                text = await next_reply(max(0.0, deadline - time.monotonic()))
                if text is None:
                    timeouts += 1
                    break  # send it again
                got = parse_reply(text)
                if got.kind.value == "resend" and got.number is not None:
                    resends += 1
                    n = max(1, got.number)
                    await next_reply(3.0)  # its ok
                    break
                if got.kind.value == "ok":
                    n += 1
                    break
            if timeouts > 100:
                return time.perf_counter() - started, "failed: no answer"
        return time.perf_counter() - started, f"finished ({resends} resends, {timeouts} timeouts)"
    finally:
        link.close()


async def driver_run(path: str, program: Program, window: int) -> tuple[float, str, dict[str, int]]:
    """Stream with the marlin driver; return the seconds taken, the outcome, its counters."""
    driver = MarlinDriver({"port": path, "window": window})
    await driver.connect()
    try:
        events = driver.events()
        finished: asyncio.Future[tuple[float, str]] = asyncio.get_running_loop().create_future()

        async def watch() -> None:
            async for event in events:
                if event.kind in (EventKind.FINISHED, EventKind.FAILED):
                    outcome = "finished"
                    if event.kind is EventKind.FAILED:
                        outcome = f"failed: {event.data['reason']}"
                    finished.set_result((time.perf_counter(), outcome))
                    return

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        started = time.perf_counter()
        await driver.start(program)
        ended, outcome = await asyncio.wait_for(finished, 1800)
        watcher.cancel()
        return ended - started, outcome, dict(driver.stats)
    finally:
        await driver.close()


CONDITIONS: tuple[tuple[str, list[str]], ...] = (
    ("default errors", ["--terminate"]),
    ("default errors + 0.1 % damaged", ["--terminate", "--corrupt-rate", "0.001", "--seed", "1"]),
    ("default errors + 1 % damaged", ["--terminate", "--corrupt-rate", "0.01", "--seed", "1"]),
    ("default errors, +2 ms latency", ["--terminate", "--latency-ms", "2"]),
    ("default errors, replies as written (no newlines)", []),
)


def _note(stats: dict[str, int], bridge: dict[str, int]) -> str:
    parts = []
    if bridge.get("lines_corrupted"):
        parts.append(f"{bridge['lines_corrupted']} lines damaged")
    if stats:
        parts.append(
            f"{stats['resends']} faults, {stats['stale_resends']} duplicate requests "
            f"collapsed, {stats['anchors']} anchors, {stats['timeouts']} timeouts"
        )
    return "; ".join(parts)


async def run(args: argparse.Namespace) -> list[Result]:
    """Run every configuration; return the results."""
    python = Path(args.octoprint_venv) / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"OctoPrint's venv not found at {python}; run scripts/octoprint-venv.sh")
    from tests.samples import vase_gcode

    source = Program.from_file(vase_gcode())
    lines = tuple(
        line for line in source.lines[: args.lines] if not re.match(r"M(109|190)\b", line)
    )
    program = Program(name=f"vase-{len(lines)}", lines=lines)
    results: list[Result] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-marlin-"))
    wanted = [
        c for i, c in enumerate(CONDITIONS) if args.conditions is None or i in args.conditions
    ]
    for mode, flags in wanted:
        peer = Peer(python, workdir, *flags)
        try:
            seconds, outcome = await one_in_flight(peer.path, lines)
            exact = peer.executed() == list(lines)
        finally:
            bridge = peer.close()
        results.append(
            Result("one-in-flight", mode, len(lines), seconds, exact, outcome, _note({}, bridge))
        )
        print(results[-1], flush=True)
        for window in args.windows:
            peer = Peer(python, workdir, *flags)
            try:
                seconds, outcome, stats = await driver_run(peer.path, program, window)
                exact = peer.executed() == list(lines)
            finally:
                bridge = peer.close()
            results.append(
                Result(
                    f"marlin window={window}",
                    mode,
                    len(lines),
                    seconds,
                    exact,
                    outcome,
                    _note(stats, bridge),
                )
            )
            print(results[-1], flush=True)
    return results


def report(results: list[Result], args: argparse.Namespace) -> str:
    """Format the results section."""
    base = {r.mode: r.rate for r in results if r.host == "one-in-flight"}
    uname = platform.uname()
    date = subprocess.run(["date", "-u"], capture_output=True, text=True, check=False)
    rows = []
    for r in results:
        ratio = f"{r.rate / base[r.mode]:.1f}x" if base.get(r.mode) else ""
        exact = "" if r.exact is None else ("yes" if r.exact else "**no**")
        rows.append(
            f"| {r.host} | {r.mode} | {r.seconds:.1f} | {r.rate:,.0f} | {ratio} "
            f"| {r.outcome} | {exact} | {r.note} |"
        )
    return "\n".join(
        [
            "## Marlin streaming (bench/bench_marlin_stream.py)",
            "",
            f"- date: {date.stdout.strip()}",
            f"- machine: {os.cpu_count()} CPUs (`nproc`), {uname.machine}, {uname.system} "
            f"{uname.release}; shared with other jobs while it ran, so the times are noisy",
            f"- python: {platform.python_version()}; peer: OctoPrint 1.11.8 VirtualPrinter as "
            "shipped (default simulated errors), on a pty, move time disabled",
            f"- program: vase.gcode (tests/samples.py), first {args.lines} lines without "
            f"M109/M190: {results[0].lines if results else 0} lines",
            "",
            "| host | condition | s | lines/s | vs one-in-flight | outcome "
            "| executed = program | notes |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def main() -> None:
    """Run the benchmark and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=30000)
    parser.add_argument("--windows", type=lambda v: [int(x) for x in v.split(",")], default=[4])
    parser.add_argument(
        "--conditions",
        type=lambda v: [int(x) for x in v.split(",")],
        default=None,
        help="indexes into CONDITIONS (default: all)",
    )
    parser.add_argument(
        "--octoprint-venv",
        default=os.environ.get("MICROFACTORY_OCTOPRINT_VENV", str(REPO / ".octoprint-venv")),
    )
    parser.add_argument("--out", default=str(REPO / "docs" / "bench-marlin.md"))
    args = parser.parse_args()
    results = asyncio.run(run(args))
    text = report(results, args)
    write_between_markers(Path(args.out), text)
    print(text)


def write_between_markers(path: Path, text: str) -> None:
    """Put the results between the bench markers of the document (or write it whole)."""
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if start in old and end in old:
        head, rest = old.split(start, 1)
        tail = rest.split(end, 1)[1]
        path.write_text(f"{head}{start}\n{text}{end}{tail}", encoding="utf-8")
    else:
        path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
