"""Helpers for design tests: sample files, meshes made on the fly, uploads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import shared_data_dir
from tests.samples import binary_stl

__all__ = ["binary_stl"]  # the design tests import it from here


@pytest.fixture
def bracket_dir() -> Path:
    """The sample L-bracket design: .scad, .stl and okh.yml."""
    return shared_data_dir() / "designs" / "l-bracket"


def cube_triangles(size: float = 10.0) -> list[tuple[tuple[float, float, float], ...]]:
    """Return the 12 outward-facing triangles of a closed cube."""
    s = size
    # Vertex index bits: 4 = x, 2 = y, 1 = z.
    v = [(x, y, z) for x in (0.0, s) for y in (0.0, s) for z in (0.0, s)]
    quads = [
        (0, 1, 3, 2),  # x = 0
        (4, 6, 7, 5),  # x = s
        (0, 4, 5, 1),  # y = 0
        (2, 3, 7, 6),  # y = s
        (0, 2, 6, 4),  # z = 0
        (1, 5, 7, 3),  # z = s
    ]
    tris = []
    for a, b, c, d in quads:
        tris.append((v[a], v[b], v[c]))
        tris.append((v[a], v[c], v[d]))
    return tris


CUBE_STL = binary_stl(cube_triangles())
OPEN_BOX_STL = binary_stl(cube_triangles()[:-2])  # top missing: not watertight
CORRUPT_STL = b"solid broken\n  facet normal 0 0 1\n    outer loop\n      vertex 0 0\n"


async def post_design(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    files: list[tuple[str, bytes]],
    **form: Any,
) -> httpx.Response:
    """Create a design with multipart files and metadata."""
    data: dict[str, Any] = {"title": "Test part", "licence": "CC-BY-4.0"}
    data.update(form)
    return await client.post(
        "/api/v1/designs",
        files=[("files", (name, content, "application/octet-stream")) for name, content in files],
        data=data,
        headers=headers,
    )


def stored_files(upload_dir: Path) -> list[Path]:
    """Return every file left in the upload folder."""
    if not upload_dir.exists():
        return []
    return sorted(p for p in upload_dir.rglob("*") if p.is_file())
