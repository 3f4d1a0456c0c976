"""Analyse triangle meshes: STL (ASCII and binary) and 3MF.

Reports bounds, volume, area and whether the mesh is watertight: every edge shared by exactly
two triangles that run along it in opposite directions, which is what a slicer needs to tell
inside from outside. Vertices are matched by exact coordinates, as STL repeats them per facet.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final
from xml.etree import ElementTree as ET

import numpy as np
import numpy.typing as npt

from microfactory.analysis.gcode import AnalysisError, BoundingBox

__all__ = ["MeshAnalysis", "analyse_3mf", "analyse_mesh", "analyse_stl"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

_STL_RECORD: Final = np.dtype([("normal", "<f4", (3,)), ("v", "<f4", (3, 3)), ("attr", "<u2")])
_FLOAT: Final = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_VERTEX_RE: Final = re.compile(rf"vertex\s+({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})")
_VERTEX_WORD_RE: Final = re.compile(r"^\s*vertex\b", re.MULTILINE)
_ENDFACET_RE: Final = re.compile(r"^\s*endfacet\b", re.MULTILINE)
_SOLID_RE: Final = re.compile(rb"\Asolid[ \t]*([^\r\n]*)")
# 3MF: the model's unit, in mm.
_UNITS: Final = {
    "micron": 0.001,
    "millimeter": 1.0,
    "centimeter": 10.0,
    "inch": 25.4,
    "foot": 304.8,
    "meter": 1000.0,
}
_MAX_3MF_PART_BYTES: Final = 1 << 30  # refuse zip bombs: no model part over 1 GiB unpacked
_MODEL_REL: Final = "http://schemas.microsoft.com/3dmanufacturing/2013/01/3dmodel"


@dataclass(frozen=True, slots=True)
class MeshAnalysis:
    """The geometry of a mesh file, in mm."""

    format: str  # "stl-ascii", "stl-binary" or "3mf"
    name: str | None
    triangles: int
    vertices: int  # distinct positions
    bbox_mm: BoundingBox
    volume_mm3: float  # enclosed volume, meaningful when watertight
    surface_area_mm2: float
    watertight: bool
    inverted: bool  # normals point inwards (negative signed volume)
    open_edges: int  # used by one triangle: a hole's border
    non_manifold_edges: int  # used by three or more triangles
    flipped_edges: int  # shared by two triangles running the same way: inconsistent winding
    degenerate_triangles: int  # two corners in the same place
    objects: int

    def as_dict(self) -> dict[str, Any]:
        """Return plain JSON-ready data."""
        return asdict(self)


def analyse_mesh(path: str | os.PathLike[str]) -> MeshAnalysis:
    """Analyse an STL or 3MF file, chosen by its extension."""
    suffix = Path(path).suffix.lower()
    if suffix == ".3mf":
        return analyse_3mf(path)
    if suffix == ".stl":
        return analyse_stl(path)
    raise AnalysisError(f"unsupported mesh format {suffix or '(no extension)'}: use .stl or .3mf")


def _read(source: str | bytes | os.PathLike[str]) -> tuple[bytes, str]:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), "input"
    path = Path(source)
    try:
        return path.read_bytes(), path.name
    except OSError as exc:
        raise AnalysisError(f"cannot read {path.name}: {exc.strerror or exc}") from exc


def analyse_stl(source: str | bytes | os.PathLike[str]) -> MeshAnalysis:
    """Analyse an ASCII or binary STL file (a path or the file's bytes)."""
    data, label = _read(source)
    if not data:
        raise AnalysisError(f"empty STL file: {label}")
    if len(data) >= 84:
        count = int.from_bytes(data[80:84], "little")
        if len(data) == 84 + 50 * count:
            # Binary, even when the header starts with "solid" (many exporters do that).
            records = np.frombuffer(data, dtype=_STL_RECORD, count=count, offset=84)
            tris = records["v"].astype(np.float64)
            name = data[:80].rstrip(b"\x00 ").decode("ascii", "replace") or None
            return _analyse(tris, "stl-binary", name, 1, label)
    solid = _SOLID_RE.match(data)
    if solid is None:
        if len(data) < 84:
            raise AnalysisError(f"not an STL file: {label} is {len(data)} bytes, too short")
        count = int.from_bytes(data[80:84], "little")
        raise AnalysisError(
            f"corrupt binary STL: {label} declares {count} triangles "
            f"({84 + 50 * count} bytes) but has {len(data)} bytes"
        )
    return _analyse_ascii(data, label, solid.group(1).decode("ascii", "replace").strip())


def _analyse_ascii(data: bytes, label: str, name: str) -> MeshAnalysis:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise AnalysisError(f"corrupt STL: {label} is neither ASCII nor binary STL") from exc
    if "endsolid" not in text[-4096:]:
        raise AnalysisError(f"truncated ASCII STL: {label} has no 'endsolid'")
    facets = len(_ENDFACET_RE.findall(text))
    vertex_words = len(_VERTEX_WORD_RE.findall(text))
    found = _VERTEX_RE.findall(text)
    if len(found) != vertex_words or vertex_words != 3 * facets:
        raise AnalysisError(
            f"corrupt ASCII STL: {label} has {facets} facets and {vertex_words} vertex lines, "
            f"{len(found)} of them readable (expected three per facet)"
        )
    tris = np.array(found, dtype=np.float64).reshape(-1, 3, 3)
    return _analyse(tris, "stl-ascii", name or None, 1, label)


_MIX1: Final = np.uint64(0xBF58476D1CE4E5B9)
_MIX2: Final = np.uint64(0x94D049BB133111EB)


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """Scramble 64-bit words (splitmix64's finaliser) so that every input bit counts."""
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def _weld(corners: F64) -> I64:
    """Number the distinct positions among (n, 3) corners; return each corner's number.

    Sorting one 64-bit hash per corner is 8x faster than np.unique(axis=0) (0.7 s against
    6.3 s for 2.9M corners); every group is checked for equality, so a hash collision only
    costs the slow path, never a wrong answer.
    """
    bits = np.ascontiguousarray(corners).view(np.uint64)
    # float32 coordinates widened to float64 end in 29 zero bits: mix, do not just multiply.
    key = _mix(bits[:, 0] ^ _mix(bits[:, 1] ^ _mix(bits[:, 2])))
    order = np.argsort(key)
    ordered = key[order]
    new = np.empty(ordered.size, dtype=bool)
    new[0] = True
    new[1:] = ordered[1:] != ordered[:-1]
    group = np.cumsum(new) - 1
    heads = order[new][group]
    if not np.array_equal(corners[order], corners[heads]):
        _, inverse = np.unique(corners, axis=0, return_inverse=True)
        return inverse.reshape(-1).astype(np.int64)
    ids = np.empty(ordered.size, dtype=np.int64)
    ids[order] = group
    return ids


def _analyse(tris: F64, fmt: str, name: str | None, objects: int, label: str) -> MeshAnalysis:
    """Measure a (n, 3, 3) array of triangle corners."""
    n = tris.shape[0]
    if n == 0:
        raise AnalysisError(f"{label} has no triangles")
    if not np.isfinite(tris).all():
        raise AnalysisError(f"corrupt mesh: {label} has non-finite coordinates")
    tris = tris + 0.0  # -0.0 -> 0.0, so equal positions compare equal bit for bit
    corners = tris.reshape(-1, 3)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    v0, v1, v2 = tris[:, 0], tris[:, 1], tris[:, 2]
    cross = np.cross(v1 - v0, v2 - v0)
    area = 0.5 * float(np.sqrt((cross * cross).sum(axis=1)).sum())
    # Signed volume: each triangle with the origin spans a tetrahedron of volume v0.(v1 x v2)/6.
    signed = float(np.einsum("ij,ij->i", v0, np.cross(v1, v2)).sum()) / 6.0

    ids = _weld(corners).reshape(-1, 3)
    vertices = int(ids.max()) + 1
    degenerate = (ids[:, 0] == ids[:, 1]) | (ids[:, 1] == ids[:, 2]) | (ids[:, 0] == ids[:, 2])
    good = ids[~degenerate]
    a = good.ravel()
    b = np.roll(good, -1, axis=1).ravel()  # directed edges a->b, b->c, c->a
    lo_id, hi_id = np.minimum(a, b), np.maximum(a, b)
    key = lo_id * vertices + hi_id
    direction = np.where(a < b, 1, -1)
    edges, inverse, uses = np.unique(key, return_inverse=True, return_counts=True)
    balance = np.bincount(inverse, weights=direction, minlength=edges.size)
    open_edges = int((uses == 1).sum())
    non_manifold = int((uses > 2).sum())
    flipped = int(((uses == 2) & (balance != 0)).sum())
    watertight = open_edges == 0 and non_manifold == 0 and flipped == 0 and good.size > 0
    return MeshAnalysis(
        format=fmt,
        name=name,
        triangles=n,
        vertices=vertices,
        bbox_mm=BoundingBox(*(round(float(v), 6) for v in (*lo, *hi))),
        volume_mm3=round(abs(signed), 6),
        surface_area_mm2=round(area, 6),
        watertight=watertight,
        inverted=signed < 0,
        open_edges=open_edges,
        non_manifold_edges=non_manifold,
        flipped_edges=flipped,
        degenerate_triangles=int(degenerate.sum()),
        objects=objects,
    )


# -- 3MF ------------------------------------------------------------------------------------


def _parse_xml(data: bytes, label: str) -> ET.Element:
    """Parse a 3MF part.

    ElementTree does not fetch external entities, and the expat it ships with (2.4+) stops
    entity-expansion ("billion laughs") attacks, so untrusted uploads are safe to parse here.
    """
    try:
        return ET.fromstring(data)  # noqa: S314  (see docstring)
    except ET.ParseError as exc:
        raise AnalysisError(f"corrupt 3MF: {label}: {exc}") from exc


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _transform(text: str | None) -> F64:
    """Return a 3MF transform as a 4x3 matrix (row vector convention: p' = [p 1] @ M)."""
    if not text:
        return np.vstack([np.eye(3), np.zeros(3)])
    values = [float(v) for v in text.split()]
    if len(values) != 12:
        raise AnalysisError(f"corrupt 3MF: transform has {len(values)} numbers, not 12")
    return np.array(values, dtype=np.float64).reshape(4, 3)


def analyse_3mf(source: str | bytes | os.PathLike[str]) -> MeshAnalysis:
    """Analyse a 3MF package: every build item's meshes, placed by their transforms."""
    data, label = _read(source)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise AnalysisError(f"corrupt 3MF: {label} is not a zip archive") from exc
    with archive:
        model_path = _model_path(archive, label)
        info = archive.getinfo(model_path)
        if info.file_size > _MAX_3MF_PART_BYTES:
            raise AnalysisError(f"3MF model part too large: {info.file_size} bytes unpacked")
        root = _parse_xml(archive.read(info), label)
    scale = _UNITS.get(root.get("unit", "millimeter"))
    if scale is None:
        raise AnalysisError(f"corrupt 3MF: unknown unit {root.get('unit')!r}")
    objects: dict[str, ET.Element] = {}
    build: list[ET.Element] = []
    for el in root.iter():
        tag = _local(el.tag)
        if tag == "object" and el.get("id") is not None:
            objects[el.get("id", "")] = el
        elif tag == "item":
            build.append(el)
    if not build:
        raise AnalysisError(f"3MF {label} has no build items")
    parts: list[F64] = []
    for item in build:
        placed = _transform(item.get("transform"))
        parts.extend(_object_triangles(objects, item.get("objectid", ""), placed, 0))
    if not parts:
        raise AnalysisError(f"3MF {label} has no triangles")
    tris = np.concatenate(parts) * scale
    name = root.findtext(".//{*}metadata[@name='Title']")
    return _analyse(tris, "3mf", name, len(build), label)


def _model_path(archive: zipfile.ZipFile, label: str) -> str:
    """Find the root model part through _rels/.rels, falling back to 3D/3dmodel.model."""
    names = set(archive.namelist())
    if "_rels/.rels" in names:
        rels = _parse_xml(archive.read("_rels/.rels"), label)
        for rel in rels:
            if rel.get("Type") == _MODEL_REL and rel.get("Target"):
                target = str(PurePosixPath(rel.get("Target", "")).relative_to("/"))
                if target in names:
                    return target
    if "3D/3dmodel.model" in names:
        return "3D/3dmodel.model"
    raise AnalysisError(f"corrupt 3MF: {label} has no 3D model part")


def _object_triangles(
    objects: dict[str, ET.Element], object_id: str, transform: F64, depth: int
) -> list[F64]:
    """Return the triangles of an object and its components, transformed."""
    if depth > 16:
        raise AnalysisError("corrupt 3MF: components nest deeper than 16 levels")
    obj = objects.get(object_id)
    if obj is None:
        raise AnalysisError(f"corrupt 3MF: build refers to missing object {object_id!r}")
    out: list[F64] = []
    for child in obj:
        tag = _local(child.tag)
        if tag == "mesh":
            tris = _mesh_triangles(child, object_id)
            out.append(tris @ transform[:3] + transform[3])
        elif tag == "components":
            for comp in child:
                inner = _transform(comp.get("transform"))
                # Apply the component's transform first, then the parent's.
                combined = np.vstack(
                    [inner[:3] @ transform[:3], inner[3] @ transform[:3] + transform[3]]
                )
                child_id = comp.get("objectid", "")
                out.extend(_object_triangles(objects, child_id, combined, depth + 1))
    return out


def _mesh_triangles(mesh: ET.Element, object_id: str) -> F64:
    verts: list[tuple[str, str, str]] = []
    tris: list[tuple[str, str, str]] = []
    for part in mesh:
        tag = _local(part.tag)
        if tag == "vertices":
            verts = [(v.get("x", ""), v.get("y", ""), v.get("z", "")) for v in part]
        elif tag == "triangles":
            tris = [(t.get("v1", ""), t.get("v2", ""), t.get("v3", "")) for t in part]
    try:
        points = np.array(verts, dtype=np.float64).reshape(-1, 3)
        index = np.array(tris, dtype=np.int64).reshape(-1, 3)
    except ValueError as exc:
        raise AnalysisError(f"corrupt 3MF: object {object_id}: {exc}") from exc
    if index.size and (index.min() < 0 or index.max() >= len(points)):
        raise AnalysisError(f"corrupt 3MF: object {object_id} refers to a missing vertex")
    return points[index]
