"""Generate large G-code files for the analysis benchmarks and memory tests.

A real print repeated: the first copy whole, the next ones without their header limits
(M201-M205), each copy lifted above the last as if the print went on growing, so the file is
one long print (a 200 MiB file is about 7.9 million lines and 7 million moves).
"""

from __future__ import annotations

import re
from pathlib import Path

_LIMITS = re.compile(rb"^M20[1345]\b[^\n]*\n", re.MULTILINE)
_Z = re.compile(rb"(?m)^(G[01] [^\n;]*?Z)(\d+\.?\d*)")


def write_big_gcode(source: Path, target: Path, size_bytes: int) -> int:
    """Write about `size_bytes` of G-code made of copies of `source`; return the size."""
    whole = source.read_bytes()
    body = _LIMITS.sub(b"", whole)
    top = max((float(m.group(2)) for m in _Z.finditer(whole)), default=0.0)
    written = 0
    with target.open("wb") as out:
        k = 0
        while written < size_bytes:
            copy = whole if k == 0 else _lift(body, k * top)
            out.write(copy)
            written += len(copy)
            k += 1
    return written


def _lift(data: bytes, dz: float) -> bytes:
    def shift(m: re.Match[bytes]) -> bytes:
        return m.group(1) + f"{float(m.group(2)) + dz:.3f}".encode()

    return _Z.sub(shift, data)
