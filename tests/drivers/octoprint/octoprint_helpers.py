"""Helpers for the OctoPrint driver tests: programs, event logs, bounded waits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from drivers.base import Driver, Event, EventKind, MachineState, Program, Status

# A bound on every wait for the server or the virtual printer: generous, because CI
# machines stall, but finite, so that a hang fails the test instead of the run.
WAIT_S = 30.0


def program(moves: int, name: str = "test part.gcode") -> Program:
    """Return a program of `moves` relative moves, each about 0.05 s on the virtual printer.

    The virtual printer sleeps a tenth of each move's real duration, and only for moves
    away from the origin in absolute mode; relative 0.5 mm moves at F60 are 0.05 s each.
    """
    lines = ["G28", "G91", *(f"G1 X0.5 F60 ; move {i}" for i in range(moves)), "G90"]
    return Program.from_text(name, "\n".join(lines) + "\n")


def heated_program(moves: int, hotend: int, name: str = "test part.gcode") -> Program:
    """Return a program that sets the hotend to `hotend` °C, homes, then makes `moves` moves.

    For the Moonraker and PrusaLink peers, which time a move by its length."""
    lines = [f"M104 S{hotend}", "G28", *(f"G1 X{i % 50} Y{i % 30} F3000" for i in range(moves))]
    return Program.from_text(name, "\n".join(lines) + "\n")


class EventLog:
    """Collect a driver's events in the background, and wait (bounded) for one."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventLog:
        self._task = asyncio.create_task(self._run())
        # Let the task reach its first await: only then is it subscribed.
        for _ in range(3):
            await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        async for event in self.driver.events():
            self.events.append(event)
            self._changed.set()

    def kinds(self) -> list[EventKind]:
        """Return the kinds seen so far, STATUS left out."""
        return [e.kind for e in self.events if e.kind is not EventKind.STATUS]

    async def wait_for(self, kind: EventKind, timeout_s: float = WAIT_S) -> Event:
        """Return the first event of this kind, waiting for it if need be."""
        async with asyncio.timeout(timeout_s):
            while True:
                for event in self.events:
                    if event.kind is kind:
                        return event
                self._changed.clear()
                await self._changed.wait()


async def wait_status(
    driver: Driver, done: Callable[[Status], bool], timeout_s: float = WAIT_S
) -> Status:
    """Wait (bounded) until the driver's status snapshot satisfies done."""
    async with asyncio.timeout(timeout_s):
        while True:
            status = await driver.status()
            if done(status):
                return status
            await asyncio.sleep(0.05)


def in_state(*states: MachineState) -> Callable[[Status], bool]:
    """Return a predicate: the status is in one of these states."""
    return lambda status: status.state in states
