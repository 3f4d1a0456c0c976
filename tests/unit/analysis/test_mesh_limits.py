"""Mesh uploads cannot exhaust memory, and malformed 3MF parts are refused clearly.

The issue's measurements: a 2 MB 3MF whose `_rels/.rels` unpacks to 2 GiB took the server to
4.2 GB, and a 263 KB 3MF with a 108 MB model part peaked at 1.9 GB. Every archive member's
unpacked size is now checked before it is read, the model is parsed as a stream, and the
vertices and triangles are capped (settings mesh_max_vertices, mesh_max_triangles).
"""

from __future__ import annotations

import io
import tracemalloc
import zipfile

import numpy as np
import pytest

from microfactory.analysis import AnalysisError, analyse_3mf, analyse_stl
from microfactory.analysis.mesh import MeshLimits
from tests.unit.analysis.test_mesh_analysis import RELS, binary_stl, cube, model_xml, package

NS = "http://schemas.microsoft.com/3dmanufacturing/core/2015/02"


def grid_model(n: int) -> str:
    """A flat n x n grid of squares: 2 n^2 triangles, (n + 1)^2 vertices, in one object."""
    verts = "".join(f'<vertex x="{i}" y="{j}" z="0"/>' for j in range(n + 1) for i in range(n + 1))
    tris = []
    for j in range(n):
        for i in range(n):
            a = j * (n + 1) + i
            b, c, d = a + 1, a + n + 1, a + n + 2
            tris.append(
                f'<triangle v1="{a}" v2="{b}" v3="{d}"/><triangle v1="{a}" v2="{d}" v3="{c}"/>'
            )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><model unit="millimeter" xmlns="{NS}">'
        f'<resources><object id="1" type="model"><mesh><vertices>{verts}</vertices>'
        f"<triangles>{''.join(tris)}</triangles></mesh></object></resources>"
        '<build><item objectid="1"/></build></model>'
    )


def test_relationships_part_is_size_checked_before_it_is_read() -> None:
    # Valid XML that unpacks to 64 MiB from a few hundred KB: it used to be read whole.
    padding = "<!--" + " " * (64 << 20) + "-->"
    rels = RELS.replace("</Relationships>", padding + "</Relationships>")
    data = package(model_xml(), rels=rels)
    assert len(data) < 1 << 20
    with pytest.raises(AnalysisError, match=r"_rels/\.rels too large"):
        analyse_3mf(data)


def test_triangle_cap_refuses_a_model_with_too_many_triangles() -> None:
    data = package(grid_model(20))  # 800 triangles
    assert analyse_3mf(data, limits=MeshLimits(max_triangles=800)).triangles == 800
    with pytest.raises(AnalysisError, match="more than 799 triangles"):
        analyse_3mf(data, limits=MeshLimits(max_triangles=799))


def test_vertex_cap_refuses_a_model_with_too_many_vertices() -> None:
    data = package(grid_model(20))  # 441 vertices
    with pytest.raises(AnalysisError, match="more than 400 vertices"):
        analyse_3mf(data, limits=MeshLimits(max_vertices=400))


def test_placed_copies_count_against_the_triangle_cap() -> None:
    # One 12-triangle cube placed 100 times by build items: 1,200 triangles to analyse.
    build = "".join(
        f'<item objectid="1" transform="1 0 0 0 1 0 0 0 1 {20 * k} 0 0"/>' for k in range(100)
    )
    data = package(model_xml(build=build))
    assert analyse_3mf(data).triangles == 1200
    with pytest.raises(AnalysisError, match="counting every placed copy"):
        analyse_3mf(data, limits=MeshLimits(max_triangles=1000))


def test_binary_and_ascii_stl_respect_the_triangle_cap() -> None:
    data = binary_stl(cube())
    assert analyse_stl(data, limits=MeshLimits(max_triangles=12)).triangles == 12
    with pytest.raises(AnalysisError, match="12 triangles, more than 11"):
        analyse_stl(data, limits=MeshLimits(max_triangles=11))


def test_model_part_is_parsed_as_a_stream() -> None:
    # Each vertex and triangle carries 1 KB of an attribute nobody reads: 30 MB of XML for a
    # 20,000-triangle mesh. A whole element tree kept it all (a 108 MB part peaked at 1.9 GB);
    # read as a stream, the peak is the mesh's arrays and the analysis, a fraction of the XML.
    pad = f' note="{"x" * 1000}"'
    xml = (
        grid_model(100)
        .replace("<vertex ", f"<vertex{pad} ")
        .replace("<triangle ", f"<triangle{pad} ")
    )
    data = package(xml)
    tracemalloc.start()
    try:
        result = analyse_3mf(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.triangles == 20_000
    assert peak < len(xml) / 2, f"peak {peak / 1e6:.1f} MB for {len(xml) / 1e6:.1f} MB of XML"


@pytest.mark.parametrize(
    "transform", ["1 0 0 0 1 0 0 0 1 a b c", "1 0 0", "1 0 0 0 1 0 0 0 1 inf 0 0"]
)
def test_bad_transform_is_refused_clearly(transform: str) -> None:
    data = package(model_xml(build=f'<item objectid="1" transform="{transform}"/>'))
    with pytest.raises(AnalysisError, match="transform"):
        analyse_3mf(data)


def test_non_numeric_vertex_is_refused_clearly() -> None:
    data = package(model_xml().replace('x="0"', 'x="zero"', 1))
    with pytest.raises(AnalysisError, match="is not numeric"):
        analyse_3mf(data)


def test_relationship_target_without_leading_slash_is_followed() -> None:
    # The model is not at the default path, so only the relationship can find it.
    rels = RELS.replace('Target="/3D/3dmodel.model"', 'Target="3D/part.model"')
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("_rels/.rels", rels)
        z.writestr("3D/part.model", model_xml())
    result = analyse_3mf(buf.getvalue())
    assert result.triangles == 12
    assert result.volume_mm3 == pytest.approx(1000.0)


def test_grid_is_measured_correctly() -> None:
    result = analyse_3mf(package(grid_model(3)))
    assert result.vertices == 16
    assert result.surface_area_mm2 == pytest.approx(9.0)
    assert result.open_edges == 12  # the border of a flat sheet
    assert np.isclose(result.volume_mm3, 0.0)
