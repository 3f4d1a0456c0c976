"""OpenSCAD and PrusaSlicer for real: render, slice, fail clearly, and stop on time."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from microfactory.analysis import analyse_stl
from microfactory.errors import InvalidInputError
from microfactory.fabrication.customizer import parse_customizer, validate_values
from microfactory.fabrication.openscad import render_stl
from microfactory.fabrication.pipeline import prepare_gcode
from microfactory.fabrication.prusaslicer import generate_profile
from microfactory.fabrication.runner import Limits, ToolError, ToolTimeout
from tests.conftest import require_or_skip, shared_data_dir

pytestmark = pytest.mark.slow

BRACKET = shared_data_dir() / "designs" / "l-bracket"
LIMITS = Limits(timeout_s=60)


@pytest.fixture
def openscad() -> None:
    """Skip (or fail in CI) without OpenSCAD."""
    require_or_skip(shutil.which("openscad") is not None, "openscad is not installed")


@pytest.fixture
def slicer() -> None:
    """Skip (or fail in CI) without PrusaSlicer."""
    require_or_skip(shutil.which("prusa-slicer") is not None, "prusa-slicer is not installed")


def _processes_in(directory: Path) -> list[int]:
    """Return processes whose working directory is inside `directory`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd.startswith(str(directory)):
            found.append(int(entry.name))
    return found


@pytest.mark.usefixtures("openscad")
async def test_openscad_renders_the_bracket_with_a_changed_width(tmp_path: Path) -> None:
    schema = parse_customizer((BRACKET / "l-bracket.scad").read_text())
    values = validate_values(schema, {"width": 35, "hole_d": 4})
    out = tmp_path / "bracket.stl"
    await render_stl(
        scad_path=BRACKET / "l-bracket.scad",
        values=values,
        out_path=out,
        workdir=tmp_path,
        limits=LIMITS,
    )
    mesh = analyse_stl(out)
    size = (
        mesh.bbox_mm.max_x - mesh.bbox_mm.min_x,
        mesh.bbox_mm.max_y - mesh.bbox_mm.min_y,
        mesh.bbox_mm.max_z - mesh.bbox_mm.min_z,
    )
    assert size == pytest.approx((40, 35, 20))  # length, width (changed), length / 2
    assert mesh.watertight


@pytest.mark.usefixtures("openscad", "slicer")
async def test_scad_to_gcode_with_a_generated_profile(tmp_path: Path) -> None:
    profile = generate_profile(bed_x_mm=220, bed_y_mm=220, max_height_mm=250, material="PETG")
    prepared = await prepare_gcode(
        design_file_path=BRACKET / "l-bracket.scad",
        kind="scad",
        parameters={"width": 30},
        profile_text=profile,
        copies=2,
        workdir=tmp_path / "work",
        limits=LIMITS,
    )
    assert prepared.path.is_file()
    analysis = prepared.analysis
    assert analysis["process"] == "fdm"
    assert analysis["max_hotend_c"] >= 240  # PETG temperatures from the generated profile
    bbox = analysis["bbox_mm"]
    assert bbox["min_x"] >= 0
    assert bbox["max_x"] <= 220
    assert bbox["min_y"] >= 0
    assert bbox["max_y"] <= 220
    assert bbox["max_z"] == pytest.approx(20, abs=0.3)
    # Two copies of a 40 x 30 mm footprint cannot fit inside one 40 x 30 box.
    assert (bbox["max_x"] - bbox["min_x"]) * (bbox["max_y"] - bbox["min_y"]) > 2 * 40 * 30
    assert analysis["estimated_time_s"] > 0
    assert "slicer_config" not in analysis
    assert "Slicing result exported" in prepared.log


@pytest.mark.usefixtures("slicer")
async def test_stl_slices_and_gcode_passes_through(tmp_path: Path) -> None:
    profile = (shared_data_dir() / "profiles" / "prusaslicer-fdm-220.ini").read_text()
    sliced = await prepare_gcode(
        design_file_path=BRACKET / "l-bracket.stl",
        kind="stl",
        parameters={},
        profile_text=profile,
        copies=1,
        workdir=tmp_path / "a",
        limits=LIMITS,
    )
    assert sliced.analysis["process"] == "fdm"
    gcode = shared_data_dir() / "gcode" / "fdm" / "cube.gcode"
    passed = await prepare_gcode(
        design_file_path=gcode,
        kind="gcode",
        parameters={},
        profile_text=None,
        copies=1,
        workdir=tmp_path / "b",
        limits=LIMITS,
    )
    assert passed.path.read_bytes() == gcode.read_bytes()
    with pytest.raises(InvalidInputError, match="no parameters"):
        await prepare_gcode(
            design_file_path=gcode,
            kind="gcode",
            parameters={"width": 1},
            profile_text=None,
            copies=1,
            workdir=tmp_path / "c",
            limits=LIMITS,
        )


@pytest.mark.usefixtures("openscad")
async def test_a_bad_scad_file_surfaces_openscads_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.scad"
    bad.write_text("cube([1, 2\n")
    with pytest.raises(ToolError) as caught:
        await render_stl(
            scad_path=bad, values={}, out_path=tmp_path / "o.stl", workdir=tmp_path, limits=LIMITS
        )
    assert caught.value.status_code == 422
    assert "OpenSCAD failed" in caught.value.detail
    assert "syntax error" in caught.value.detail
    empty = tmp_path / "empty.scad"
    empty.write_text('echo("nothing");\n')
    with pytest.raises(ToolError, match="empty"):
        await render_stl(
            scad_path=empty, values={}, out_path=tmp_path / "e.stl", workdir=tmp_path, limits=LIMITS
        )


@pytest.mark.usefixtures("openscad", "slicer")
async def test_a_part_too_big_for_the_bed_surfaces_prusaslicers_message(tmp_path: Path) -> None:
    with pytest.raises(ToolError) as caught:
        await prepare_gcode(
            design_file_path=BRACKET / "l-bracket.stl",
            kind="stl",
            parameters={},
            profile_text=generate_profile(bed_x_mm=30, bed_y_mm=30),
            copies=1,
            workdir=tmp_path,
            limits=LIMITS,
        )
    assert "PrusaSlicer failed" in caught.value.detail
    assert "could not fit" in caught.value.detail
    assert "[trace]" not in caught.value.detail


@pytest.mark.usefixtures("openscad")
async def test_a_render_past_its_time_limit_is_killed(tmp_path: Path) -> None:
    slow = tmp_path / "slow.scad"
    # Minkowski sums of fine spheres take CGAL minutes.
    slow.write_text(
        "minkowski() { sphere(10, $fn=120); for (i = [0:20]) translate([i*3, 0, 0]) "
        "sphere(2, $fn=80); }\n"
    )
    with pytest.raises(ToolTimeout, match="ran longer than 1 s"):
        await render_stl(
            scad_path=slow,
            values={},
            out_path=tmp_path / "slow.stl",
            workdir=tmp_path,
            limits=Limits(timeout_s=1),
        )
    assert _processes_in(tmp_path) == []
