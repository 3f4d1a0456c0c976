"""The mesh analyser on the sample design and on small generated meshes."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from microfactory.analysis import AnalysisError, analyse_3mf, analyse_mesh, analyse_stl
from microfactory.analysis.mesh import _weld
from tests import samples

BRACKET = samples.BRACKET / "l-bracket.stl"

# A unit cube, 12 triangles wound counter-clockwise seen from outside (outward normals).
CUBE_V = np.array(
    [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]],
    dtype=float,
)
CUBE_F = [
    (0, 2, 1), (0, 3, 2),  # bottom (z=0), facing -z
    (4, 5, 6), (4, 6, 7),  # top
    (0, 1, 5), (0, 5, 4),  # front (y=0)
    (2, 3, 7), (2, 7, 6),  # back
    (1, 2, 6), (1, 6, 5),  # right (x=1)
    (3, 0, 4), (3, 4, 7),  # left
]  # fmt: skip


def cube(size: float = 10.0, faces: list[tuple[int, int, int]] | None = None) -> np.ndarray:
    return CUBE_V[np.array(faces or CUBE_F)] * size


def binary_stl(tris: np.ndarray, header: bytes = b"generated") -> bytes:
    out = [header.ljust(80, b"\x00"), struct.pack("<I", len(tris))]
    for t in tris:
        out.append(struct.pack("<3f", 0, 0, 0) + struct.pack("<9f", *t.ravel()) + b"\x00\x00")
    return b"".join(out)


def ascii_stl(tris: np.ndarray, name: str = "cube") -> bytes:
    lines = [f"solid {name}"]
    for t in tris:
        lines += ["  facet normal 0 0 0", "    outer loop"]
        lines += [f"      vertex {x:g} {y:g} {z:g}" for x, y, z in t]
        lines += ["    endloop", "  endfacet"]
    lines.append(f"endsolid {name}")
    return ("\n".join(lines) + "\n").encode()


def test_sample_bracket_measures_as_designed() -> None:
    result = analyse_stl(BRACKET)
    assert result.format == "stl-ascii"
    assert result.name == "OpenSCAD_Model"
    assert result.triangles == 512
    assert result.watertight
    assert not result.inverted
    box = result.bbox_mm
    assert (box.max_x, box.max_y, box.max_z) == (40.0, 20.0, 20.0)
    assert (box.min_x, box.min_y, box.min_z) == (0.0, 0.0, 0.0)
    # 40x20x4 base + 4x20x20 upright - overlap - three 5 mm holes through 4 mm (40-gons).
    hole = 0.5 * 40 * 2.5**2 * np.sin(2 * np.pi / 40) * 4
    assert result.volume_mm3 == pytest.approx(3200 + 1600 - 320 - 3 * hole, rel=1e-6)
    assert json.loads(json.dumps(result.as_dict()))["triangles"] == 512
    assert analyse_mesh(BRACKET) == result


@pytest.mark.parametrize("encode", [binary_stl, ascii_stl], ids=["binary", "ascii"])
def test_closed_cube(encode: object) -> None:
    data = encode(cube(10.0))  # type: ignore[operator]
    result = analyse_stl(data)
    assert result.triangles == 12
    assert result.vertices == 8
    assert result.volume_mm3 == pytest.approx(1000.0)
    assert result.surface_area_mm2 == pytest.approx(600.0)
    assert result.watertight
    assert result.open_edges == result.non_manifold_edges == result.flipped_edges == 0
    assert result.bbox_mm.size == (10.0, 10.0, 10.0)


def test_binary_header_may_start_with_solid() -> None:
    result = analyse_stl(binary_stl(cube(), header=b"solid exported by CAD"))
    assert result.format == "stl-binary"
    assert result.watertight


def test_cube_with_a_missing_face_is_not_watertight() -> None:
    result = analyse_stl(binary_stl(cube(faces=CUBE_F[2:])))  # no bottom
    assert not result.watertight
    assert result.open_edges == 4
    assert result.triangles == 10


def test_flipped_triangle_is_inconsistent_winding() -> None:
    faces = list(CUBE_F)
    a, b, c = faces[0]
    faces[0] = (a, c, b)
    result = analyse_stl(ascii_stl(cube(faces=faces)))
    assert not result.watertight
    assert result.open_edges == 0
    assert result.flipped_edges == 3


def test_extra_fin_is_non_manifold() -> None:
    fin = np.array([[[0, 0, 0], [10, 0, 0], [5, -5, 5]]], dtype=float)
    result = analyse_stl(binary_stl(np.concatenate([cube(), fin])))
    assert result.non_manifold_edges == 1
    assert not result.watertight


def test_inside_out_cube_is_flagged() -> None:
    faces = [(a, c, b) for a, b, c in CUBE_F]
    result = analyse_stl(binary_stl(cube(faces=faces)))
    assert result.watertight  # consistent, just inverted
    assert result.inverted
    assert result.volume_mm3 == pytest.approx(1000.0)


def test_degenerate_triangles_are_counted() -> None:
    sliver = np.array([[[0, 0, 0], [0, 0, 0], [1, 1, 1]]], dtype=float)
    result = analyse_stl(binary_stl(np.concatenate([cube(), sliver])))
    assert result.degenerate_triangles == 1
    assert result.watertight  # the collapsed triangle has no edges to break the shell


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty STL"),
        (b"hello", "too short"),
        (binary_stl(cube())[:-7], "declares 12 triangles"),
        (binary_stl(cube())[:80] + struct.pack("<I", 13) + binary_stl(cube())[84:], "declares 13"),
        (bytes(range(256)) * 3, "corrupt binary STL"),
        (ascii_stl(cube())[:-30], "no 'endsolid'"),
        (ascii_stl(cube()).replace(b"vertex 10 0 0", b"vertex 10 zero 0", 1), "corrupt ASCII"),
        (b"solid x\nfacet normal 0 0 1\nouter loop\nvertex 0 0 0\nendfacet\nendsolid", "corrupt"),
        (b"solid empty\nendsolid empty\n", "no triangles"),
        (binary_stl(np.where(cube() == 10.0, np.nan, cube())), "non-finite"),
    ],
    ids=["empty", "short", "truncated", "count", "garbage", "no-end", "word", "two-corners",
         "no-triangles", "nan"],
)  # fmt: skip
def test_corrupt_stl_is_refused_clearly(data: bytes, message: str) -> None:
    with pytest.raises(AnalysisError, match=message):
        analyse_stl(data)


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(AnalysisError, match="cannot read"):
        analyse_stl(tmp_path / "nope.stl")
    (tmp_path / "model.obj").write_text("v 0 0 0\n")
    with pytest.raises(AnalysisError, match="unsupported mesh format"):
        analyse_mesh(tmp_path / "model.obj")


# -- 3MF ------------------------------------------------------------------------------------

RELS = """<?xml version="1.0" encoding="UTF-8"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">
 <Relationship Target="/3D/3dmodel.model" Id="rel0"
  Type="http://schemas.microsoft.com/3dmanufacturing/2013/01/3dmodel"/>
</Relationships>"""


def model_xml(unit: str = "millimeter", build: str = '<item objectid="1"/>') -> str:
    verts = "".join(f'<vertex x="{x:g}" y="{y:g}" z="{z:g}"/>' for x, y, z in CUBE_V * 10)
    tris = "".join(f'<triangle v1="{a}" v2="{b}" v3="{c}"/>' for a, b, c in CUBE_F)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<model unit="{unit}" xmlns="http://schemas.microsoft.com/3dmanufacturing/core/2015/02">'
        '<metadata name="Title">Test cube</metadata>'
        f'<resources><object id="1" type="model"><mesh><vertices>{verts}</vertices>'
        f"<triangles>{tris}</triangles></mesh></object>"
        '<object id="2" type="model"><components>'
        '<component objectid="1" transform="1 0 0 0 1 0 0 0 1 100 0 0"/>'
        "</components></object></resources>"
        f"<build>{build}</build></model>"
    )


def package(model: str, rels: str | None = RELS) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        if rels is not None:
            z.writestr("_rels/.rels", rels)
        z.writestr("3D/3dmodel.model", model)
    return buf.getvalue()


def test_3mf_cube() -> None:
    result = analyse_3mf(package(model_xml()))
    assert result.format == "3mf"
    assert result.name == "Test cube"
    assert result.volume_mm3 == pytest.approx(1000.0)
    assert result.watertight
    assert result.bbox_mm.size == (10.0, 10.0, 10.0)


def test_3mf_units_transforms_and_components() -> None:
    build = '<item objectid="1" transform="1 0 0 0 1 0 0 0 1 0 0 5"/><item objectid="2"/>'
    result = analyse_3mf(package(model_xml(unit="centimeter", build=build), rels=None))
    assert result.objects == 2
    assert result.triangles == 24
    assert result.volume_mm3 == pytest.approx(2 * 100.0**3)
    box = result.bbox_mm
    # The first cube is lifted 5 cm, the second moved 100 cm along X by its component.
    assert (box.min_x, box.max_x) == (0.0, 1100.0)
    assert (box.min_z, box.max_z) == (0.0, 150.0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a zip", "not a zip archive"),
        (package(model_xml())[:50], "not a zip archive"),
        (package("<model><resources>", rels=None), "corrupt 3MF"),
        (package(model_xml(build='<item objectid="9"/>')), "missing object"),
        (package(model_xml(unit="parsec")), "unknown unit"),
        (package(model_xml(build="")), "no build items"),
        (package(model_xml().replace('v3="1"', 'v3="99"', 1)), "missing vertex"),
    ],
    # Named, not shown: the zips carry the time they were made, and test workers must agree
    # on every test's name.
    ids=["text", "truncated", "corrupt", "missing-object", "unit", "no-build", "no-vertex"],
)
def test_corrupt_3mf_is_refused_clearly(data: bytes, message: str) -> None:
    with pytest.raises(AnalysisError, match=message):
        analyse_3mf(data)


def test_3mf_without_model_part() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(AnalysisError, match="no 3D model part"):
        analyse_3mf(buf.getvalue())


def test_vertex_welding_matches_exact_comparison() -> None:
    # float32 positions (binary STL) widened to float64 share 29 zero low bits; the hash
    # must still tell them apart, and equal positions must get the same number.
    rng = np.random.default_rng(1)
    points = rng.random((50_000, 3)).astype(np.float32).astype(np.float64)
    corners = points[rng.integers(0, len(points), 200_000)]
    ours = _weld(corners)
    _, expected = np.unique(corners, axis=0, return_inverse=True)
    expected = expected.reshape(-1)
    # Same partition: a one-to-one map between the two numberings.
    pairs = np.unique(np.stack([ours, expected], axis=1), axis=0)
    assert len(pairs) == len(np.unique(ours)) == len(np.unique(expected))
