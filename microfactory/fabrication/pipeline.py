"""From a design file to G-code: render (.scad), slice (STL/3MF) or pass through (.gcode)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microfactory.analysis import AnalysisError, analyse_gcode_async
from microfactory.errors import InvalidInputError
from microfactory.fabrication.openscad import render_stl
from microfactory.fabrication.prusaslicer import slice_to_gcode
from microfactory.fabrication.runner import Limits

MAX_COPIES = 50
MESH_KINDS = frozenset({"stl", "3mf"})
GCODE_KINDS = frozenset({"gcode"})
SCAD_KINDS = frozenset({"scad"})


@dataclass(frozen=True)
class PreparedGcode:
    """G-code ready for a machine, with the tools' log and the analysis of the result."""

    path: Path
    log: str
    analysis: dict[str, Any]


def compact_analysis(data: dict[str, Any]) -> dict[str, Any]:
    """Drop the bulky parts of a G-code analysis (the slicer's full configuration)."""
    return {k: v for k, v in data.items() if k != "slicer_config"}


async def prepare_gcode(
    *,
    design_file_path: Path,
    kind: str,
    parameters: Mapping[str, Any],
    profile_text: str | None,
    copies: int,
    workdir: Path,
    limits: Limits,
    support_files: Mapping[str, Path] | None = None,
) -> PreparedGcode:
    """Turn a design file into G-code in `workdir` and analyse it.

    `.scad` renders with OpenSCAD (with validated `parameters`) and is then sliced; STL and
    3MF are sliced with PrusaSlicer and `profile_text`; G-code passes through as it is.
    `support_files` (name -> path) are copied beside a .scad for its include/use/import.
    Tool failures raise ToolError (422) carrying the tool's message; the caller owns
    `workdir` and removes it.
    """
    if not 1 <= copies <= MAX_COPIES:
        raise InvalidInputError(f"copies must be between 1 and {MAX_COPIES}, not {copies}")
    # The tools run with `workdir` as their working directory: every path they get must be
    # absolute, or a relative data directory (the demo's default) breaks them.
    workdir, design_file_path, support_files = await asyncio.to_thread(
        _absolute, workdir, design_file_path, support_files or {}
    )
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    logs: list[str] = []
    out = workdir / "output.gcode"
    if kind in GCODE_KINDS:
        if parameters:
            raise InvalidInputError("a G-code file has no parameters to change")
        if copies != 1:
            raise InvalidInputError(
                "a G-code file cannot be copied on the bed; slice the design's mesh instead"
            )
        await asyncio.to_thread(shutil.copyfile, design_file_path, out)
        logs.append("G-code passed through unchanged")
    elif kind in SCAD_KINDS or kind in MESH_KINDS:
        if kind in MESH_KINDS and parameters:
            raise InvalidInputError(f"a {kind.upper()} mesh has no parameters to change")
        if not profile_text:
            raise InvalidInputError("slicing needs a slicer profile for the target machine")
        model = design_file_path
        if kind in SCAD_KINDS:
            scad = workdir / "design.scad"
            await asyncio.to_thread(_copy_in, design_file_path, scad, support_files or {})
            model = workdir / "model.stl"
            logs.append(
                await render_stl(
                    scad_path=scad,
                    values=parameters,
                    out_path=model,
                    workdir=workdir,
                    limits=limits,
                )
            )
        elif design_file_path.suffix.lower() != f".{kind}":
            # PrusaSlicer picks its reader by the file's extension.
            model = workdir / f"model.{kind}"
            await asyncio.to_thread(shutil.copyfile, design_file_path, model)
        logs.append(
            await slice_to_gcode(
                model_path=model,
                profile_text=profile_text,
                out_path=out,
                copies=copies,
                workdir=workdir,
                limits=limits,
            )
        )
    else:
        raise InvalidInputError(
            f"a {kind} file cannot be made into G-code here (STL, 3MF, OpenSCAD or G-code)"
        )
    try:
        analysis = await analyse_gcode_async(out)
    except AnalysisError as exc:
        raise InvalidInputError(f"the G-code cannot be analysed: {exc}") from None
    return PreparedGcode(
        path=out, log="\n".join(logs)[-20000:], analysis=compact_analysis(analysis.as_dict())
    )


def _copy_in(main: Path, target: Path, support: Mapping[str, Path]) -> None:
    for name, path in support.items():
        safe = Path(name).name  # names come from our own records, but never leave workdir
        if safe and safe != target.name:
            shutil.copyfile(path, target.parent / safe)
    shutil.copyfile(main, target)


def _absolute(
    workdir: Path, source: Path, support: Mapping[str, Path]
) -> tuple[Path, Path, dict[str, Path]]:
    """Resolve the paths a tool gets (it runs with the work folder as its working directory)."""
    return workdir.resolve(), source.resolve(), {n: p.resolve() for n, p in support.items()}
