"""Benchmark: stream vase.gcode to OctoPrint's VirtualPrinter, send-ahead vs one line in flight.

    .venv/bin/python bench/bench_marlin_stream.py [--lines 30000] [--out docs/bench-marlin.md]

VirtualPrinter runs with its move time disabled (--motion-scale 0), so the link and the
protocol are the limit. The same run streams with:
- `one-in-flight`: a minimal host that sends a line and waits for its ok (OctoPrint's way);
- the marlin driver with windows 1, 2, 4 (the default) and 8 lines in flight.
Then it streams again with 1 % of the lines damaged on the link and checks that what
VirtualPrinter executed is the program, line for line.

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
from drivers.marlin import MarlinDriver, format_line  # noqa: E402
from drivers.serial_io import AsyncSerialLink  # noqa: E402

BRIDGE = REPO / "tests" / "peers" / "virtual_printer_bridge.py"
OWN = re.compile(r"^(M105|M110|M115|M155)\b")  # lines the hosts send on their own


@dataclass
class Result:
    """One streaming run."""

    host: str
    mode: str
    lines: int
    seconds: float
    exact: bool | None = None
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


async def one_in_flight(path: str, lines: tuple[str, ...]) -> float:
    """Stream as OctoPrint does: send one line, wait for its ok; return the seconds taken."""
    link = AsyncSerialLink(path)
    await link.open()

    async def wait_ok() -> str:
        # VirtualPrinter's replies often lack a newline: a bare "ok" at the end counts.
        while True:
            try:
                text = await link.readline(0.005)
            except TimeoutError:
                partial = link.pending_partial()
                if not re.search(rb"(ok|Resend:\s*\d+)$", partial):
                    continue
                text = link.take_partial().decode()
            if "Resend" in text:
                return "resend"
            if re.search(r"(^|wait|ok|\d)ok($|\s)", text):
                return "ok"

    try:
        link.write((format_line(0, "M110 N0") + "\n").encode())
        await asyncio.wait_for(wait_ok(), 10)
        started = time.perf_counter()
        n = 1
        for command in lines:
            link.write((format_line(n, command) + "\n").encode())
            if await asyncio.wait_for(wait_ok(), 30) == "resend":
                raise RuntimeError("the baseline host does not handle resends")
            n += 1
        return time.perf_counter() - started
    finally:
        link.close()


async def driver_run(path: str, program: Program, window: int) -> tuple[float, dict[str, int]]:
    """Stream with the marlin driver; return the seconds taken and its counters."""
    driver = MarlinDriver({"port": path, "window": window})
    await driver.connect()
    try:
        events = driver.events()
        finished: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        async def watch() -> None:
            async for event in events:
                if finished.done():
                    return
                if event.kind in (EventKind.FINISHED, EventKind.FAILED):
                    if event.kind is EventKind.FAILED:
                        finished.set_exception(RuntimeError(event.data["reason"]))
                    else:
                        finished.set_result(time.perf_counter())
                    return

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        started = time.perf_counter()
        await driver.start(program)
        ended = await asyncio.wait_for(finished, 900)
        watcher.cancel()
        return ended - started, dict(driver.stats)
    finally:
        await driver.close()


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
    modes = (
        ("newline added, pty", ["--terminate"]),
        ("newline added, +2 ms latency", ["--terminate", "--latency-ms", "2"]),
        ("as VirtualPrinter sends, pty", []),
    )
    for mode, extra in modes if "speed" in args.parts else ():
        peer = Peer(python, workdir, *extra)
        try:
            seconds = await one_in_flight(peer.path, lines)
            results.append(Result("one-in-flight", mode, len(lines), seconds))
        finally:
            peer.close()
        print(results[-1], flush=True)
        for window in args.windows:
            peer = Peer(python, workdir, *extra)
            try:
                seconds, stats = await driver_run(peer.path, program, window)
                exact = peer.executed() == list(lines)
                results.append(Result(f"marlin window={window}", mode, len(lines), seconds, exact))
            finally:
                peer.close()
            print(results[-1], stats, flush=True)
    for fixed in (True, False) if "corruption" in args.parts else ():
        flags = ["--corrupt-rate", "0.01", "--seed", "1"]
        if fixed:
            flags.append("--fix-resend-counter")
        peer = Peer(python, workdir, "--terminate", *flags)
        note = ""
        try:
            seconds, stats = await asyncio.wait_for(driver_run(peer.path, program, 4), 900)
            exact = peer.executed() == list(lines)
            note = f"{stats['resends']} resends, {stats['stale_resends']} stale requests ignored"
        except (RuntimeError, TimeoutError) as exc:
            seconds, exact, note = float("nan"), False, f"stopped: {exc!r}"
        finally:
            bridge_stats = peer.close()
        note = f"{bridge_stats.get('lines_corrupted', '?')} lines damaged; {note}"
        label = "1% corrupted" + (", counter fixed" if fixed else ", VirtualPrinter as is")
        results.append(Result("marlin window=4", label, len(lines), seconds, exact, note))
        print(results[-1], flush=True)
    return results


def report(results: list[Result], args: argparse.Namespace) -> str:
    """Format the results section."""
    base = {r.mode: r.rate for r in results if r.host == "one-in-flight"}
    uname = platform.uname()
    date = subprocess.run(["date"], capture_output=True, text=True, check=False).stdout.strip()
    rows = []
    for r in results:
        ratio = f"{r.rate / base[r.mode]:.1f}x" if base.get(r.mode) else ""
        exact = "" if r.exact is None else ("yes" if r.exact else "**no**")
        rows.append(
            f"| {r.host} | {r.mode} | {r.lines} | {r.seconds:.2f} | {r.rate:,.0f} | {ratio} "
            f"| {exact} | {r.note} |"
        )
    return "\n".join(
        [
            "## Marlin streaming (bench/bench_marlin_stream.py)",
            "",
            f"- date: {date}",
            f"- machine: {os.cpu_count()} CPUs (`nproc`), {uname.machine}, {uname.system} "
            f"{uname.release}",
            f"- python: {platform.python_version()}; peer: OctoPrint 1.11.8 VirtualPrinter on a "
            "pty, move time disabled; `+2 ms latency`: every reply delayed 2 ms by the bridge, "
            "as a USB-serial adapter does (FTDI's latency timer defaults to 16 ms)",
            f"- program: vase.gcode, first {args.lines} lines without M109/M190",
            "",
            "| host | replies | lines | s | lines/s | vs one-in-flight | executed = program "
            "| notes |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def main() -> None:
    """Run the benchmark and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=30000)
    parser.add_argument(
        "--windows", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2, 4, 8]
    )
    parser.add_argument(
        "--octoprint-venv",
        default=os.environ.get("MICROFACTORY_OCTOPRINT_VENV", str(REPO / ".octoprint-venv")),
    )
    parser.add_argument("--parts", default="speed,corruption", help="speed, corruption or both")
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
