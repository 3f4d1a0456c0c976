"""Sample files for tests and benchmarks, all inside this repository.

Small real files live in `tests/data/` (see its README for where each came from). Large
inputs are generated when first asked for: `vase_gcode()` writes a 360-facet cylinder as an
STL and slices it with the PrusaSlicer CLI, the way the original 6.3 MB vase sample was made,
and caches the result under `.cache/` (ignored by git) keyed by the slicer's version.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import struct
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
GCODE = DATA / "gcode"
PROFILE = DATA / "profiles" / "prusaslicer-fdm-220.ini"
BRACKET = DATA / "designs" / "l-bracket"
CACHE = Path(os.environ.get("MICROFACTORY_SAMPLE_CACHE", REPO / ".cache" / "samples"))


def data_file(*parts: str) -> Path:
    """Return a committed sample file, failing clearly if it is missing."""
    path = DATA.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"sample {path.relative_to(REPO)} is missing from the repository")
    return path


def cylinder_stl(*, radius_mm: float, height_mm: float, facets: int) -> bytes:
    """Return a closed binary STL cylinder standing on z=0, centred on (110, 110)."""
    cx = cy = 110.0
    ring = [
        (cx + radius_mm * math.cos(2 * math.pi * i / facets),
         cy + radius_mm * math.sin(2 * math.pi * i / facets))
        for i in range(facets)
    ]  # fmt: skip
    triangles: list[tuple[tuple[float, float, float], ...]] = []
    for i in range(facets):
        (x0, y0), (x1, y1) = ring[i], ring[(i + 1) % facets]
        b0, b1, t0, t1 = (x0, y0, 0.0), (x1, y1, 0.0), (x0, y0, height_mm), (x1, y1, height_mm)
        triangles += [(b0, b1, t1), (b0, t1, t0)]  # side, outward
        triangles += [((cx, cy, 0.0), b1, b0)]  # bottom, facing -z
        triangles += [((cx, cy, height_mm), t0, t1)]  # top, facing +z
    return binary_stl(triangles)


def binary_stl(triangles: list[tuple[tuple[float, float, float], ...]]) -> bytes:
    """Return a binary STL of these triangles (normals left zero: slicers recompute them)."""
    out = bytearray(b"microfactory test".ljust(80, b" "))
    out += struct.pack("<I", len(triangles))
    for tri in triangles:
        out += struct.pack("<3f", 0.0, 0.0, 0.0)
        for vertex in tri:
            out += struct.pack("<3f", *vertex)
        out += b"\0\0"
    return bytes(out)


def _slicer_version(slicer: str) -> str:
    done = subprocess.run([slicer, "--help"], capture_output=True, text=True, timeout=60)
    return (done.stdout.splitlines() or ["unknown"])[0].strip()


def vase_gcode(*, facets: int = 360, height_mm: float = 60.0) -> Path:
    """Return a sliced 360-facet vase (about 220,000 lines of short segments), made once."""
    slicer = shutil.which("prusa-slicer")
    if slicer is None:
        raise FileNotFoundError("prusa-slicer is not installed (Debian package prusa-slicer)")
    key = hashlib.sha256(
        f"{_slicer_version(slicer)}|{facets}|{height_mm}|".encode() + PROFILE.read_bytes()
    ).hexdigest()[:16]
    out = CACHE / f"vase-{key}.gcode"
    if out.is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    stl = CACHE / f"vase-{key}.stl"
    stl.write_bytes(cylinder_stl(radius_mm=30.0, height_mm=height_mm, facets=facets))
    partial = out.with_suffix(".partial.gcode")
    # PrusaSlicer 2.5 needs a display-less environment; it reads no GUI settings from the CLI.
    env = {**os.environ, "HOME": str(CACHE)}
    done = subprocess.run(
        [slicer, "--export-gcode", "--load", str(PROFILE), "--output", str(partial), str(stl)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    if done.returncode != 0 or not partial.is_file():
        raise RuntimeError(f"prusa-slicer could not slice the vase: {done.stderr[-2000:]}")
    partial.replace(out)
    return out
