"""How long a job takes on a machine, from its size, quantity and process (no G-code).

A hub sees only a part's outer size, never its G-code, so this is a rough, documented
estimate, the same for every shop so that the ranking stays fair. The constants are
deliberately middle-of-the-road figures, each named here:

- FDM printing: the printed volume is taken as FDM_FILL (15 %) of the bounding box (walls,
  top/bottom skins and ~15-20 % infill of a typical mechanical part), deposited at
  FDM_RATE_MM3_S (8 mm³/s) for a 0.4 mm nozzle, scaled by the nozzle's area (a 0.6 mm nozzle
  deposits ~2.25×), plus FDM_SETUP_S (10 min: heating, first layer, removal). A 40×20×20 mm
  bracket comes to ~15 min, a 200 mm cube to ~42 h.
- Laser cutting: the cut path is LASER_PATH_FACTOR (3) × the outline's perimeter (holes and
  inner contours), cut at LASER_SPEED_MM_S (10 mm/s for 3-4 mm plywood at 40 W) scaled by the
  laser's power, plus LASER_SETUP_S (5 min: placing the sheet, focus). A 600×400 mm sheet
  comes to ~15 min.
- CNC milling: CNC_REMOVAL (30 %) of the bounding box is cleared at CNC_RATE_MM3_S
  (16.7 mm³/s, 1 cm³/min: a 6 mm end mill in aluminium or hardwood on a hobby router), plus
  CNC_SETUP_S (15 min: fixturing, zeroing, tool changes).

Identical machines of one model split the quantity (ceil(quantity / machines)).
"""

from __future__ import annotations

import math

FDM_FILL = 0.15
FDM_RATE_MM3_S = 8.0
FDM_NOZZLE_MM = 0.4
FDM_SETUP_S = 600.0
LASER_PATH_FACTOR = 3.0
LASER_SPEED_MM_S = 10.0
LASER_POWER_W = 40.0
LASER_SETUP_S = 300.0
CNC_REMOVAL = 0.30
CNC_RATE_MM3_S = 1000.0 / 60.0
CNC_SETUP_S = 900.0


def part_seconds(
    process: str,
    size: tuple[float, float, float],
    *,
    nozzle_mm: float | None = None,
    laser_w: float | None = None,
) -> float:
    """Return the estimated seconds to make one part of this outer size (mm)."""
    a, b, c = sorted(size, reverse=True)
    if process == "fdm_printing":
        nozzle = nozzle_mm if nozzle_mm and nozzle_mm > 0 else FDM_NOZZLE_MM
        rate = FDM_RATE_MM3_S * (nozzle / FDM_NOZZLE_MM) ** 2
        return FDM_FILL * a * b * c / rate + FDM_SETUP_S
    if process == "laser_cutting":
        power = laser_w if laser_w and laser_w > 0 else LASER_POWER_W
        speed = LASER_SPEED_MM_S * min(max(power / LASER_POWER_W, 0.25), 4.0)
        return LASER_PATH_FACTOR * 2 * (a + b) / speed + LASER_SETUP_S
    if process == "cnc_milling":
        return CNC_REMOVAL * a * b * c / CNC_RATE_MM3_S + CNC_SETUP_S
    raise ValueError(f"unknown process {process!r}")


def job_hours(
    process: str,
    size: tuple[float, float, float],
    quantity: int,
    *,
    machines: int = 1,
    nozzle_mm: float | None = None,
    laser_w: float | None = None,
) -> float:
    """Return the estimated hours for `quantity` parts on `machines` identical machines."""
    rounds = math.ceil(max(quantity, 1) / max(machines, 1))
    return rounds * part_seconds(process, size, nozzle_mm=nozzle_mm, laser_w=laser_w) / 3600.0
