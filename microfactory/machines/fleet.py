"""The fleet: every machine supervisor of this process, and the status they keep."""

from __future__ import annotations

from typing import Any, Protocol

from microfactory.errors import ConflictError
from microfactory.machines.models import Machine
from microfactory.machines.service import offline_status


class SupervisorLike(Protocol):
    """What the fleet needs from a supervisor."""

    def status_dict(self) -> dict[str, Any]: ...

    async def send_commands(self, lines: list[str]) -> list[dict[str, Any]]: ...


class Fleet:
    """Holds the supervisors; requests read status here and never touch a device."""

    def __init__(self) -> None:
        self.supervisors: dict[int, SupervisorLike] = {}

    def status(self, machine: Machine) -> dict[str, Any]:
        """Return the live status of a machine, or why it has none."""
        sup = self.supervisors.get(machine.id)
        if sup is None:
            return offline_status(machine)
        status = sup.status_dict()
        if machine.maintenance:
            status = {**status, "maintenance": True}
        return status

    async def send_commands(self, machine: Machine, lines: list[str]) -> list[dict[str, Any]]:
        """Send raw lines through the machine's supervisor."""
        sup = self.supervisors.get(machine.id)
        if sup is None:
            reason = offline_status(machine)["message"]
            raise ConflictError(f"machine {machine.name!r} cannot take commands: {reason}")
        return await sup.send_commands(lines)
