"""Render OpenSCAD designs to STL with Customizer values, in a bounded worker."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microfactory.errors import InvalidInputError
from microfactory.fabrication.customizer import define_args
from microfactory.fabrication.runner import Limits, RunResult, ToolError, file_size, run_bounded

_NOISE = re.compile(
    r"^(Geometries in cache|Geometry cache size|CGAL Polyhedrons in cache|CGAL cache size|"
    r"Total rendering time|Rendering Polygon Mesh|\s+(Top level object|Simple|Vertices|"
    r"Halfedges|Edges|Halffacets|Facets|Volumes):|Compiling design|Parsing design|"
    r"Rendering Polygon|Normalized tree|ECHO:)"
)


# Modules that read a file: its name is their first argument or `file=`. Every other call
# may read a file only through `file=` (linear_extrude and rotate_extrude still accept one).
_FILE_READERS = frozenset(
    {
        "import",
        "import_stl",
        "import_off",
        "import_dxf",
        "surface",
        "dxf_linear_extrude",
        "dxf_rotate_extrude",
        "dxf_dim",
        "dxf_cross",
    }
)
_INCLUDE = re.compile(r"(include|use)[ \t\r\n]*<([^\t\r\n>]*)>")
_IDENT = re.compile(r"\$?[A-Za-z_][A-Za-z0-9_]*")
MAX_SCAN_BYTES = 10 * 1024 * 1024  # a .scad larger than this is refused, not scanned


class SandboxError(InvalidInputError):
    """A .scad file names a file outside its own design (422)."""


@dataclass(frozen=True)
class _Token:
    kind: str  # "include", "ident", "string", "punct", "other"
    text: str
    line: int


def _tokens(source: str) -> list[_Token]:
    """Split OpenSCAD source into the tokens the sandbox check needs (comments dropped)."""
    out: list[_Token] = []
    i, line, n = 0, 1, len(source)
    while i < n:
        c = source[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif source.startswith("//", i):
            end = source.find("\n", i)
            i = n if end < 0 else end
        elif source.startswith("/*", i):
            end = source.find("*/", i + 2)
            end = n if end < 0 else end + 2
            line += source.count("\n", i, end)
            i = end
        elif c == '"':
            j = i + 1
            while j < n and source[j] != '"':
                j += 2 if source[j] == "\\" else 1
            text = source[i + 1 : min(j, n)]
            out.append(_Token("string", text, line))
            line += text.count("\n")
            i = j + 1
        elif (m := _INCLUDE.match(source, i)) is not None:
            out.append(_Token("include", m.group(2), line))
            line += m.group(0).count("\n")
            i = m.end()
        elif (m := _IDENT.match(source, i)) is not None:
            out.append(_Token("ident", m.group(0), line))
            i = m.end()
        elif c in "(),=":
            out.append(_Token("punct", c, line))
            i += 1
        else:
            out.append(_Token("other", c, line))
            i += 1
    return out


def _arguments(tokens: list[_Token], start: int) -> tuple[list[list[_Token]], int]:
    """Split the arguments of the call whose "(" is at `start`; return them and the end."""
    args: list[list[_Token]] = [[]]
    depth = 0
    i = start
    while i < len(tokens):
        tok = tokens[i]
        if tok.kind == "punct" and tok.text == "(":
            depth += 1
            if depth > 1:
                args[-1].append(tok)
        elif tok.kind == "punct" and tok.text == ")":
            depth -= 1
            if depth == 0:
                return [a for a in args if a], i
            args[-1].append(tok)
        elif tok.kind == "punct" and tok.text == "," and depth == 1:
            args.append([])
        elif tok.kind == "other" and tok.text in "[{":
            depth += 1
            args[-1].append(tok)
        elif tok.kind == "other" and tok.text in "]}":
            depth -= 1
            args[-1].append(tok)
        else:
            args[-1].append(tok)
        i += 1
    return [a for a in args if a], i


def check_sandbox(source: str, *, file_name: str, allowed: set[str]) -> None:
    """Refuse a .scad whose include, use, import() or file= names a file not in `allowed`.

    OpenSCAD reads any path it is given, so a member's design could otherwise include or
    import /etc/passwd or another member's upload and see it echoed in the tool's messages.
    A design may name only its own files, by their bare names, as plain string literals: a
    name built from expressions or variables cannot be checked, so it is refused too.
    """

    def refuse(line: int, what: str, why: str) -> SandboxError:
        return SandboxError(
            f"{file_name} line {line}: {what} {why}; an OpenSCAD design may only use its own "
            f"files, named as plain strings (this design has: {', '.join(sorted(allowed))})"
        )

    def check_name(line: int, what: str, name: str) -> None:
        if "\\" in name or "/" in name or name in {"", ".", ".."} or name not in allowed:
            raise refuse(line, f"{what} {name!r}", "names a file outside this design")

    tokens = _tokens(source)
    for i, tok in enumerate(tokens):
        if tok.kind == "include":
            check_name(tok.line, "include/use of", tok.text.strip())
            continue
        if tok.kind != "ident" or i + 1 >= len(tokens) or tokens[i + 1].text != "(":
            continue
        args, _ = _arguments(tokens, i + 1)
        for pos, arg in enumerate(args):
            named = len(arg) >= 2 and arg[0].kind == "ident" and arg[1].text == "="
            if named and arg[0].text != "file":
                continue
            if not named and (tok.text not in _FILE_READERS or pos != 0):
                continue
            value = arg[2:] if named else arg
            what = f"{tok.text}()"
            if len(value) != 1 or value[0].kind != "string":
                raise refuse(tok.line, what, "takes its file name from an expression")
            check_name(tok.line, what, value[0].text)


def check_design_files(scad_path: Path) -> None:
    """Check every .scad beside `scad_path` (the design's files) against the sandbox."""
    folder = scad_path.parent
    allowed = {p.name for p in folder.iterdir() if p.is_file()}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() != ".scad" or not path.is_file():
            continue
        if path.stat().st_size > MAX_SCAN_BYTES:
            raise SandboxError(f"{path.name} is larger than {MAX_SCAN_BYTES} bytes")
        source = path.read_text("utf-8", errors="replace")
        check_sandbox(source, file_name=path.name, allowed=allowed - {path.name})


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
    await asyncio.to_thread(check_design_files, scad_path)
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
