"""OpenSCAD sandbox: a member's .scad may only include, use or import its own design's files.

Every case renders with the real OpenSCAD: without the check each of the refused files
would render, reading a file that belongs to someone else (or to the server).
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from microfactory.fabrication.openscad import SandboxError, check_sandbox, render_stl
from microfactory.fabrication.runner import Limits
from tests.conftest import require_or_skip

LIMITS = Limits(timeout_s=120)


@pytest.fixture(autouse=True)
def openscad() -> None:
    require_or_skip(shutil.which("openscad") is not None, "openscad is not installed")


def tetrahedron_stl() -> bytes:
    """A small valid binary STL."""
    v = [(0, 0, 0), (10, 0, 0), (0, 10, 0), (0, 0, 10)]
    faces = [(0, 2, 1), (0, 1, 3), (0, 3, 2), (1, 2, 3)]
    body = b"".join(
        struct.pack("<3f", 0, 0, 0) + b"".join(struct.pack("<3f", *v[i]) for i in face) + b"\0\0"
        for face in faces
    )
    return b"\0" * 80 + struct.pack("<I", len(faces)) + body


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A design folder, and another member's files beside it."""
    design = tmp_path / "design"
    other = tmp_path / "other-member"
    design.mkdir()
    other.mkdir()
    (other / "secret.stl").write_bytes(tetrahedron_stl())
    (other / "secret.scad").write_text("cube(5);\n")
    return design, other


async def render(design: Path, source: str, tmp_path: Path) -> None:
    scad = design / "main.scad"
    scad.write_text(source)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    await render_stl(
        scad_path=scad, values={}, out_path=work / "out.stl", workdir=work, limits=LIMITS
    )


@pytest.mark.parametrize(
    "source",
    [
        'import("{other}/secret.stl");',
        'import(file="../other-member/secret.stl");',
        "include <{other}/secret.scad>",
        "use <../other-member/secret.scad>\ncube(1);",
        'f = "{other}/secret.stl";\nimport(f);',
        'import(str("{other}", "/secret.stl"));',
        'import("\\x2e\\x2e/other-member/secret.stl");',
        'surface(file="{other}/secret.stl");',
        'linear_extrude(height=1, file="{other}/secret.dxf");',
    ],
    ids=[
        "absolute-import",
        "relative-import",
        "include",
        "use",
        "variable",
        "expression",
        "escapes",
        "surface",
        "extrude-file",
    ],
)
async def test_files_outside_the_design_are_refused(
    layout: tuple[Path, Path], tmp_path: Path, source: str
) -> None:
    design, other = layout
    with pytest.raises(SandboxError) as err:
        await render(design, source.replace("{other}", str(other)), tmp_path)
    assert err.value.status_code == 422
    assert "may only use its own files" in err.value.detail
    assert not (tmp_path / "work" / "out.stl").exists()


async def test_an_included_file_of_the_design_is_checked_too(
    layout: tuple[Path, Path], tmp_path: Path
) -> None:
    design, other = layout
    (design / "lib.scad").write_text(f'module leak() {{ import("{other}/secret.stl"); }}\n')
    with pytest.raises(SandboxError, match=r"lib\.scad line 1"):
        await render(design, "use <lib.scad>\nleak();\n", tmp_path)


async def test_the_designs_own_files_render(layout: tuple[Path, Path], tmp_path: Path) -> None:
    design, _ = layout
    (design / "lib.scad").write_text("module block(s) { cube(s); }\n")
    (design / "part.stl").write_bytes(tetrahedron_stl())
    source = (
        '// import("/etc/passwd") in a comment is not a call\n'
        'include <lib.scad>\nlabel = "/etc/passwd";\nblock(4);\n'
        'translate([20, 0, 0]) import("part.stl");\n'
        'translate([0, 20, 0]) import(file = "part.stl", convexity = 2);\n'
    )
    await render(design, source, tmp_path)
    assert (tmp_path / "work" / "out.stl").stat().st_size > 84


def test_the_check_names_the_line_and_the_file() -> None:
    with pytest.raises(SandboxError) as err:
        check_sandbox(
            'cube(1);\n/* a\ncomment */\nimport("/etc/passwd");\n',
            file_name="bracket.scad",
            allowed={"bracket.scad"},
        )
    assert err.value.detail.startswith("bracket.scad line 4: import() '/etc/passwd'")
