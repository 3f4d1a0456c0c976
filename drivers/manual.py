"""Manual machines: booked and logged, never driven."""

from __future__ import annotations

from drivers.base import Driver, DriverError, MachineState, Program


class ManualDriver(Driver):
    """A machine with no link: its status is idle and it refuses programs."""

    name = "manual"

    async def connect(self) -> None:
        """Mark the machine idle; there is nothing to connect to."""
        self._set_status(state=MachineState.IDLE, message="manual machine")

    async def close(self) -> None:
        """Nothing to close."""

    async def start(self, program: Program) -> None:
        """Refuse: a manual machine is operated by hand."""
        raise DriverError("this is a manual machine: it is booked and logged, not driven")

    async def pause(self) -> None:
        """Refuse: nothing runs."""
        raise DriverError("this is a manual machine: there is no program to pause")

    async def resume(self) -> None:
        """Refuse: nothing runs."""
        raise DriverError("this is a manual machine: there is no program to resume")

    async def cancel(self) -> None:
        """Refuse: nothing runs."""
        raise DriverError("this is a manual machine: there is no program to cancel")

    async def emergency_stop(self) -> None:
        """Refuse: use the machine's own stop button."""
        raise DriverError("this is a manual machine: use its own emergency stop")

    async def send(self, command: str) -> list[str]:
        """Refuse: there is no link."""
        raise DriverError("this is a manual machine: it has no link to send commands on")
