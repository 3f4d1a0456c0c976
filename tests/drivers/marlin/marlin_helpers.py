"""Helpers for the marlin driver tests: programs, event logs, VirtualPrinter bridges."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from drivers.base import Event, EventKind, Program
from tests.conftest import REPO, shared_data_dir

BRIDGE = REPO / "tests" / "peers" / "virtual_printer_bridge.py"


def octoprint_python() -> Path:
    """Return the python of the venv OctoPrint is installed in."""
    venv = Path(os.environ.get("MICROFACTORY_OCTOPRINT_VENV", REPO / ".octoprint-venv"))
    return venv / "bin" / "python"


def cube_program(count: int | None = None) -> Program:
    """Return cube.gcode (its first `count` lines), comments removed."""
    program = Program.from_file(shared_data_dir() / "gcode" / "fdm" / "cube.gcode")
    if count is None:
        return program
    return Program(name=f"cube-{count}", lines=program.lines[:count])


def moves_program(count: int) -> Program:
    """Return `count` G1 lines of cube.gcode: no homing or heating, moves only."""
    moves = [line for line in cube_program().lines if line.startswith("G1 ")]
    return Program(name=f"moves-{count}", lines=tuple(moves[:count]))


class EventLog:
    """Collect a driver's events from the moment it is created."""

    def __init__(self, driver: Any) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(driver.events()))

    async def _run(self, stream: AsyncIterator[Event]) -> None:
        async for event in stream:
            self.events.append(event)
            self._changed.set()

    async def started(self) -> EventLog:
        """Let the subscription start before anything happens."""
        for _ in range(3):
            await asyncio.sleep(0)
        return self

    def kinds(self) -> list[EventKind]:
        """Return the kinds seen so far, STATUS and LOG left out."""
        return [e.kind for e in self.events if e.kind not in (EventKind.STATUS, EventKind.LOG)]

    async def wait(self, *kinds: EventKind, within: float = 20.0) -> Event:
        """Return the first event of one of these kinds, waiting at most `within` s."""
        async with asyncio.timeout(within):
            while True:
                for event in self.events:
                    if event.kind in kinds:
                        return event
                self._changed.clear()
                await self._changed.wait()

    def close(self) -> None:
        """Stop collecting."""
        self._task.cancel()


async def wait_until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Poll until predicate() is true, failing after `within` s."""
    async with asyncio.timeout(within):
        # The state polled lives in another thread (the simulator) or process: no Event.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


class Bridge:
    """OctoPrint's VirtualPrinter on a pty, run by tests/peers/virtual_printer_bridge.py."""

    def __init__(self, proc: subprocess.Popen[str], path: str, record: Path) -> None:
        self.proc = proc
        self.path = path
        self.record = record

    def executed(self) -> list[str]:
        """Return the commands VirtualPrinter ran so far, in order."""
        if not self.record.exists():
            return []
        return self.record.read_text(encoding="utf-8").splitlines()

    def stop(self) -> None:
        """Stop the bridge process."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_bridge(tmp_path: Path, *args: str) -> Bridge:
    """Start a VirtualPrinter bridge (blocking: call it with asyncio.to_thread)."""
    python = octoprint_python()
    record = tmp_path / f"executed-{len(list(tmp_path.glob('executed-*')))}.txt"
    proc = subprocess.Popen(
        [str(python), str(BRIDGE), "--record", str(record), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # the bridge prints the pty path first
    if not line.startswith("/dev/"):
        proc.kill()
        _, err = proc.communicate(timeout=5)
        raise RuntimeError(f"the VirtualPrinter bridge did not start: {line!r} {err[-2000:]}")
    return Bridge(proc, line, record)
