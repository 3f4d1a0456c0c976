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
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from drivers.base import EventKind, Program  # noqa: E402
from drivers.marlin import MarlinDriver, format_line, parse_reply, split_replies  # noqa: E402
from drivers.serial_io import AsyncSerialLink  # noqa: E402

BRIDGE = REPO / "tests" / "peers" / "virtual_printer_bridge.py"
# lines the hosts send on their own: handshake, M503, polls, the driver's M110 anchors and
# its closing M400 (it reports a job finished when the motion is over); OctoPrint's M20/M21
# (SD card list and init) and M27 (SD status) polls
OWN = re.compile(r"^(M105|M110 N\d+|M115|M155 S\d+|M503|M400|M20|M21|M27( S\d+)?)$")


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


async def driver_run(path: str, program: Program, window: int) -> tuple[float, str, dict[str, Any]]:
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
        stats: dict[str, Any] = dict(driver.stats)
        stats["windows"] = driver._core.window_choices
        return ended - started, outcome, stats
    finally:
        await driver.close()


CONDITIONS: tuple[tuple[str, list[str]], ...] = (
    ("clean (no simulated errors)", ["--terminate", "--simulated-errors", "none"]),
    ("default errors", ["--terminate"]),
    ("default errors + 0.1 % damaged", ["--terminate", "--corrupt-rate", "0.001", "--seed", "1"]),
    ("default errors + 1 % damaged", ["--terminate", "--corrupt-rate", "0.01", "--seed", "1"]),
    ("default errors, +2 ms latency", ["--terminate", "--latency-ms", "2"]),
    ("default errors, replies as written (no newlines)", []),
)


def _diff(executed: list[str], lines: tuple[str, ...]) -> str:
    """Say how the executed program differs from the program (empty if it does not)."""
    if executed == list(lines):
        return ""
    missing = len(lines) - len(executed)
    i = next((k for k, (a, b) in enumerate(zip(executed, lines, strict=False)) if a != b), None)
    if i is None:
        i = min(len(executed), len(lines))
    got = executed[i] if i < len(executed) else "(nothing)"
    want = lines[i] if i < len(lines) else "(nothing)"
    return (
        f"{-missing:+d} lines vs the program; first difference at line {i + 1}: "
        f"ran {got!r}, program {want!r}"
    )


def _note(stats: dict[str, Any], bridge: dict[str, int]) -> str:
    parts = []
    if bridge.get("lines_corrupted"):
        parts.append(f"{bridge['lines_corrupted']} lines damaged")
    if stats:
        parts.append(
            f"{stats['resends']} faults, {stats['stale_resends']} duplicate requests "
            f"collapsed, {stats['anchors']} anchors, {stats['timeouts']} timeouts"
        )
        if stats.get("windows"):
            parts.append("windows chosen " + ",".join(str(w) for w in stats["windows"]))
    return "; ".join(parts)


class OctoPrintHost:
    """A real OctoPrint server (its own venv) printing through its serial layer to a pty.

    It is configured as tests/peers/octoprint_server.py does (no wizard, no network), plus
    `serial.additionalPorts` so that it lists and opens the bridge's pty like a USB port.
    Everything else about its serial layer is as shipped.
    """

    def __init__(self, venv: Path, workdir: Path) -> None:
        import yaml

        from tests.peers.octoprint_server import OctoPrintServer, octoprint_executable

        exe = octoprint_executable(venv)
        if exe is None:
            raise FileNotFoundError(f"no OctoPrint in {venv}")
        self.server = OctoPrintServer(executable=exe, basedir=workdir / "octoprint")
        self.server.prepare()
        config_path = self.server.basedir / "config.yaml"
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        config["serial"]["additionalPorts"] = ["/dev/pts/*"]
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.server.start()

    def close(self) -> None:
        """Stop the server."""
        self.server.stop()

    def print_file(self, port: str, path: Path) -> tuple[float, str]:
        """Connect to `port`, upload and print `path`; return the seconds and the outcome."""
        api = self.server.api
        r = api("POST", "/api/connection", json={"command": "connect", "port": port})
        if r.status_code != 204:
            return 0.0, f"failed: connect answered {r.status_code} {r.text[:200]}"
        try:
            end = time.monotonic() + 60
            while api("GET", "/api/connection").json()["current"]["state"] != "Operational":
                if time.monotonic() > end:
                    return 0.0, "failed: never Operational"
                time.sleep(0.2)
            with path.open("rb") as fh:
                r = api("POST", "/api/files/local", files={"file": (path.name, fh)})
            if r.status_code != 201:
                return 0.0, f"failed: upload answered {r.status_code}"
            started = time.perf_counter()
            r = api(
                "POST", f"/api/files/local/{path.name}", json={"command": "select", "print": True}
            )
            if r.status_code != 204:
                return 0.0, f"failed: select answered {r.status_code}"
            seen_printing = False
            while True:
                job = api("GET", "/api/job").json()
                state = job.get("state", "")
                if state.startswith("Printing"):
                    seen_printing = True
                elif seen_printing or (job.get("progress") or {}).get("completion") == 100:
                    if state == "Operational":
                        return time.perf_counter() - started, "finished (OctoPrint: Operational)"
                    if not state.startswith(("Starting", "Finishing")):
                        return time.perf_counter() - started, f"failed: {state}"
                if time.perf_counter() - started > 1800:
                    return time.perf_counter() - started, "failed: still printing after 30 min"
                time.sleep(0.05)
        finally:
            api("POST", "/api/connection", json={"command": "disconnect"})
            time.sleep(1.0)


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
    octoprint: OctoPrintHost | None = None
    gcode = workdir / f"vase-{len(lines)}.gcode"
    gcode.write_text("\n".join(lines) + "\n", encoding="ascii")
    if args.octoprint_conditions:
        octoprint = OctoPrintHost(Path(args.octoprint_venv), workdir)
    try:
        for i, (mode, flags) in enumerate(CONDITIONS):
            if args.conditions is not None and i not in args.conditions:
                continue
            for _ in range(args.repeat):
                await run_condition(python, workdir, mode, flags, lines, program, args, results)
                if octoprint is None or i not in args.octoprint_conditions:
                    continue
                peer = Peer(python, workdir, *flags)
                try:
                    seconds, outcome = await asyncio.to_thread(
                        octoprint.print_file, peer.path, gcode
                    )
                    executed = peer.executed()
                    exact = executed == list(lines)
                finally:
                    bridge = peer.close()
                note = "; ".join(n for n in (_note({}, bridge), _diff(executed, lines)) if n)
                results.append(
                    Result(
                        "OctoPrint 1.11.8 server",
                        mode,
                        len(lines),
                        seconds,
                        exact,
                        outcome,
                        note,
                    )
                )
                print(results[-1], flush=True)
    finally:
        if octoprint is not None:
            octoprint.close()
    return summarise(results)


def summarise(results: list[Result]) -> list[Result]:
    """Collapse repeated runs of a host and condition into the median run (by time)."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.host, r.mode), []).append(r)
    out = []
    for runs in groups.values():
        if len(runs) == 1:
            out.append(runs[0])
            continue
        ordered = sorted(runs, key=lambda r: r.seconds)
        mid = ordered[len(ordered) // 2]
        exact = all(r.exact for r in runs) if mid.exact is not None else None
        times = ", ".join(f"{r.seconds:.1f}" for r in runs)
        note = f"median of {len(runs)} runs ({times} s)" + (f"; {mid.note}" if mid.note else "")
        out.append(Result(mid.host, mid.mode, mid.lines, mid.seconds, exact, mid.outcome, note))
    return out


async def run_condition(
    python: Path,
    workdir: Path,
    mode: str,
    flags: list[str],
    lines: tuple[str, ...],
    program: Program,
    args: argparse.Namespace,
    results: list[Result],
) -> None:
    """Run one condition with the one-line host and the driver."""
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


def report(results: list[Result], args: argparse.Namespace) -> str:
    """Format the results section."""
    base = {r.mode: r.rate for r in results if r.host == "one-in-flight"}
    uname = platform.uname()
    date = subprocess.run(["date", "-u"], capture_output=True, text=True, check=False)
    rows = []
    for r in results:
        ratio = f"{r.rate / base[r.mode]:.1f}x" if base.get(r.mode) else ""
        rate = f"{r.rate:,.0f}"
        if r.outcome.startswith("failed"):
            rate, ratio = "—", ""  # a job that stopped early has no rate
        exact = "" if r.exact is None else ("yes" if r.exact else "**no**")
        rows.append(
            f"| {r.host} | {r.mode} | {r.seconds:.1f} | {rate} | {ratio} "
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
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per host and condition, alternating"
    )
    parser.add_argument(
        "--octoprint-conditions",
        type=lambda v: [int(x) for x in v.split(",")] if v else [],
        default=[0, 1],
        help="conditions a real OctoPrint server also prints (default 0,1; '' for none)",
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
