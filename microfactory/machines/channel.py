"""The command channel: how requests reach machines, as an interface the domains depend on.

Routes and services never hold a supervisor or a driver: they talk to a `CommandChannel`
that the runtime (microfactory/runtime/) implements, today in-process (`runtime.fleet.Fleet`).
A channel to a machine host in another process implements the same methods.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from microfactory.events import Actor
from microfactory.machines.models import Machine


class MachineHandle(Protocol):
    """The commands one machine takes (through its supervisor)."""

    async def start_job(self, job_id: int, actor: Actor | None = None) -> None:
        """Start a job assigned to this machine."""

    async def pause(self, actor: Actor | None = None) -> None:
        """Pause the running job."""

    async def resume(self, actor: Actor | None = None) -> None:
        """Resume the paused job."""

    async def cancel(self, actor: Actor | None = None) -> None:
        """Cancel the running job."""

    async def emergency_stop(self, actor: Actor | None = None) -> None:
        """Stop the machine now."""

    async def reset(self, actor: Actor | None = None) -> dict[str, Any]:
        """Reset and reconnect the machine after an emergency stop or a firmware halt."""


class StatusReader(Protocol):
    """Live machine status, as the queue and the pages read it."""

    def status(self, machine: Machine) -> dict[str, Any]:
        """Return the live status of a machine, or why it has none."""


class CommandChannel(StatusReader, Protocol):
    """Everything requests may ask of the machines."""

    def get(self, machine: Machine) -> MachineHandle:
        """Return a machine's handle, or refuse (ConflictError) with why there is none."""

    def running_job(self, machine_id: int) -> int | None:
        """Return the job a machine is running, if any."""

    def snapshots(self) -> dict[int, dict[str, Any]]:
        """Return every supervised machine's status, by id."""

    async def send_commands(self, machine: Machine, lines: list[str]) -> list[dict[str, Any]]:
        """Send raw lines to a machine."""

    async def reset(self, machine: Machine, actor: Actor | None = None) -> dict[str, Any]:
        """Reset and reconnect a machine; returns {"message", "status"}."""

    def temperature_history(self, machine_id: int) -> list[dict[str, Any]]:
        """Return the last few minutes of a machine's temperatures, oldest first."""

    async def sync(self, machine: Machine | None, machine_id: int) -> None:
        """Pick up a machine created, changed or removed (after the commit)."""

    def subscribe(self) -> AsyncIterator[tuple[str, int, dict[str, Any]]]:
        """Yield live updates: ("machine", id, status) and ("job", id, transition)."""
