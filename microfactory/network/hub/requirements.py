"""What a routing request asks for: its fields, or those of an OKH manifest or a local design.

OKH-LOSH parts carry `tsdc` (the Technology-specific Documentation Criteria: "3DP" for 3D
printing, "CNC" for milling, "LAS" for laser cutting; a few spellings are taken), `material`
and `outer-dimensions` (OpenSCAD's `cube(size=[x,y,z])`, a `{width, height, depth}` or
`{x, y, z}` table in mm, or "x×y×z"). A design held here, named by its content hash, gives its
imported manifest, or else its files: a mesh's bounding box for 3D printing, SVG/DXF for
laser cutting.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.designs import service as design_service
from microfactory.errors import InvalidInputError, NotFoundError
from microfactory.network.hub.schemas import RouteRequest

TSDC = {
    "3dp": "fdm_printing",
    "fdm": "fdm_printing",
    "3d-printing": "fdm_printing",
    "cnc": "cnc_milling",
    "mill": "cnc_milling",
    "las": "laser_cutting",
    "lac": "laser_cutting",
    "laser": "laser_cutting",
}
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_CUBE = re.compile(rf"cube\s*\(\s*(?:size\s*=\s*)?\[{_NUMBER},{_NUMBER},{_NUMBER}\]")
_BY = re.compile(rf"^{_NUMBER}[x×*]{_NUMBER}[x×*]{_NUMBER}(?:mm)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Requirements:
    """A job to route: processes (any of), material, size (mm), quantity, deadline, place."""

    processes: tuple[str, ...]
    material: str
    size: tuple[float, float, float]
    quantity: int
    deadline: dt.datetime | None
    lat: float
    lon: float
    radius_km: float


def _dimensions(value: Any) -> tuple[float, float, float] | None:
    if isinstance(value, dict):
        for keys in (("width", "height", "depth"), ("x", "y", "z")):
            if all(isinstance(value.get(k), int | float) for k in keys):
                return (float(value[keys[0]]), float(value[keys[1]]), float(value[keys[2]]))
        return _dimensions(value.get("openSCAD") or value.get("openscad"))
    if isinstance(value, str):
        match = _CUBE.search(value) or _BY.match(value.strip())
        if match:
            x, y, z = (abs(float(g)) for g in match.groups())
            return (x, y, z)
    return None


def _process(value: Any) -> str | None:
    values = value if isinstance(value, list) else [value]
    for item in values:
        if isinstance(item, str):
            found = TSDC.get(item.strip().lower())
            if found:
                return found
    return None


def _material(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, list):
        return next((_material(v) for v in value if _material(v)), None)
    if isinstance(value, dict):
        return _material(value.get("name") or value.get("material"))
    return None


def from_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """Return the process, material and size an OKH manifest states (what it has)."""
    parts = manifest.get("part") or manifest.get("parts") or []
    parts = [parts] if isinstance(parts, dict) else [p for p in parts if isinstance(p, dict)]
    found: dict[str, Any] = {}
    for source in [*parts, manifest]:
        if "process" not in found and (p := _process(source.get("tsdc"))):
            found["process"] = p
        if "material" not in found and (m := _material(source.get("material"))):
            found["material"] = m
        dims = source.get("outer-dimensions") or source.get("outer_dimensions")
        if "size" not in found and (d := _dimensions(dims)):
            found["size"] = d
    return found


async def from_design(*, session: AsyncSession, content_hash: str) -> dict[str, Any]:
    """Return what a local design (by content hash) says about its making."""
    design = await design_service.get_by_hash(session=session, content_hash=content_hash)
    if design is None:
        raise NotFoundError(f"no design with content hash {content_hash} is held here")
    found = from_manifest(design.okh) if isinstance(design.okh, dict) else {}
    for f in design.files:
        box = f.analysis.get("bbox_mm") if isinstance(f.analysis, dict) else None
        if f.kind in ("stl", "3mf") and isinstance(box, dict) and "size" not in found:
            found["size"] = tuple(
                round(float(box[f"max_{a}"]) - float(box[f"min_{a}"]), 3) for a in "xyz"
            )
            found.setdefault("process", "fdm_printing")
        elif f.kind in ("svg", "dxf"):
            found.setdefault("process", "laser_cutting")
    return found


async def resolve(*, session: AsyncSession, request: RouteRequest) -> Requirements:
    """Merge the request's fields with its manifest's or design's; 422 when one is missing."""
    derived: dict[str, Any] = {}
    if request.okh is not None:
        derived = from_manifest(request.okh)
    elif request.design_hash is not None:
        derived = await from_design(session=session, content_hash=request.design_hash.lower())
    processes: tuple[str, ...]
    if isinstance(request.process, list):
        processes = tuple(dict.fromkeys(request.process))
    elif request.process is not None:
        processes = (request.process,)
    else:
        processes = (derived["process"],) if "process" in derived else ()
    material = request.material or derived.get("material")
    size = (
        (request.size_mm.x, request.size_mm.y, request.size_mm.z)
        if request.size_mm is not None
        else derived.get("size")
    )
    missing = [
        name
        for name, value in (("process", processes), ("material", material), ("size_mm", size))
        if not value
    ]
    if missing:
        source = " or its manifest" if request.okh or request.design_hash else ""
        raise InvalidInputError(
            f"routing needs {', '.join(missing)}: give it in the request{source}",
            missing=missing,
        )
    assert material is not None
    assert size is not None
    return Requirements(
        processes=processes,
        material=material,
        size=(float(size[0]), float(size[1]), float(size[2])),
        quantity=request.quantity,
        deadline=request.deadline,
        lat=request.near.lat,
        lon=request.near.lon,
        radius_km=request.radius_km,
    )
