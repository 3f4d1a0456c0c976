"""Render OpenSCAD designs to STL with Customizer values, in a bounded worker."""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from microfactory.fabrication.customizer import define_args
from microfactory.fabrication.runner import Limits, RunResult, ToolError, file_size, run_bounded

_NOISE = re.compile(
    r"^(Geometries in cache|Geometry cache size|CGAL Polyhedrons in cache|CGAL cache size|"
    r"Total rendering time|Rendering Polygon Mesh|\s+(Top level object|Simple|Vertices|"
    r"Halfedges|Edges|Halffacets|Facets|Volumes):|Compiling design|Parsing design|"
    r"Rendering Polygon|Normalized tree|ECHO:)"
)


def openscad_binary() -> str | None:
    """Return the OpenSCAD executable, or None when it is not installed."""
    return shutil.which("openscad")


def tool_message(result: RunResult) -> str:
    """Return what OpenSCAD said about a failure: its ERROR lines, else its last words."""
    lines = [ln.strip() for ln in (result.stderr + "\n" + result.stdout).splitlines()]
    errors = [ln for ln in lines if ln.startswith(("ERROR:", "WARNING:"))]
    errors = [ln for ln in errors if ln.startswith("ERROR:")] or errors
    if not errors:
        errors = [ln for ln in lines if ln and not _NOISE.match(ln)][-3:]
    return "; ".join(errors)[:2000] or f"openscad exited with status {result.returncode}"


async def render_stl(
    *,
    scad_path: Path,
    values: Mapping[str, Any],
    out_path: Path,
    workdir: Path,
    limits: Limits,
) -> str:
    """Render a .scad file with these parameter values to a binary STL; return the log."""
    binary = openscad_binary()
    if binary is None:
        raise ToolError("OpenSCAD is not installed on this server", tool="openscad")
    argv = [binary, "--export-format", "binstl", "-o", str(out_path), *define_args(values)]
    argv.append(str(scad_path))
    result = await run_bounded(
        argv, limits=limits, cwd=workdir, output_path=out_path, tool="openscad"
    )
    log = (result.stderr + result.stdout).strip()
    # 84 bytes is an empty binary STL (header and count): nothing was rendered.
    if result.returncode != 0 or file_size(out_path) <= 84:
        message = tool_message(result)
        raise ToolError(f"OpenSCAD failed: {message}", tool="openscad", log=log[-4000:])
    return log
