"""A few minutes of each machine's temperatures, kept in memory for the machine page's graph.

A fresh page draws the recent past at once instead of an empty graph, then follows the live
stream. The buffer is fed from the status updates the fleet already publishes, so a web
worker (`RemoteFleet`) keeps its own copy from the host's snapshots, with no extra traffic.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

KEEP_S = 600.0  # ten minutes: a heat-up and the first layers
EVERY_S = 1.0  # at most one sample a second (Marlin reports every 2 s, GRBL has no heaters)


class TemperatureHistory:
    """A ring buffer of temperature samples per machine: (time, {heater: [actual, target]})."""

    def __init__(
        self,
        keep_s: float = KEEP_S,
        every_s: float = EVERY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keep_s = keep_s
        self.every_s = every_s
        self._clock = clock
        self._maxlen = int(keep_s / every_s) + 1
        self._samples: dict[int, deque[tuple[float, dict[str, list[float | None]]]]] = {}

    def record(self, machine_id: int, status: Mapping[str, Any]) -> None:
        """Keep a status's temperatures, unless the last sample is under `every_s` old."""
        temps = status.get("temperatures")
        if not isinstance(temps, Mapping) or not temps:
            return
        at = status.get("updated_at")
        at = float(at) if isinstance(at, int | float) else self._clock()
        ring = self._samples.get(machine_id)
        if ring is None:
            ring = self._samples[machine_id] = deque(maxlen=self._maxlen)
        if ring and at - ring[-1][0] < self.every_s:
            return
        values: dict[str, list[float | None]] = {}
        for name, t in temps.items():
            if isinstance(t, Mapping) and isinstance(t.get("actual"), int | float):
                target = t.get("target")
                values[str(name)] = [
                    float(t["actual"]),
                    float(target) if isinstance(target, int | float) else None,
                ]
        if values:
            ring.append((at, values))
        self._prune(ring)

    def _prune(self, ring: deque[tuple[float, dict[str, list[float | None]]]]) -> None:
        horizon = self._clock() - self.keep_s
        while ring and ring[0][0] < horizon:
            ring.popleft()

    def samples(self, machine_id: int) -> list[dict[str, Any]]:
        """Return a machine's samples, oldest first: [{"t": unix time, "temps": {...}}]."""
        ring = self._samples.get(machine_id)
        if not ring:
            return []
        self._prune(ring)
        return [{"t": at, "temps": {k: list(v) for k, v in temps.items()}} for at, temps in ring]

    def forget(self, machine_id: int) -> None:
        """Drop a removed machine's samples."""
        self._samples.pop(machine_id, None)
