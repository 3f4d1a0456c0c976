"""A job's G-code for the page's preview, and the images slicers embed in it.

The analysis keeps only their sizes (job.analysis["thumbnails"]); the image itself stays in the
file, in comment blocks at its head (PrusaSlicer, SuperSlicer, OrcaSlicer and Cura's plugin
write `; thumbnail begin 300x300 12345` … `; thumbnail end` before the first move). Reading
them again costs one bounded read of the file's first megabytes, and the response is cached by
the browser (the file never changes: its SHA-256 is the ETag).
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Final

from microfactory.errors import NotFoundError
from microfactory.jobs.models import Job

#: how much of a file's head is searched; thumbnails come before the first layer
SCAN_BYTES: Final = 4 * 1024 * 1024
_BEGIN: Final = re.compile(rb"^;\s*thumbnail(?:_(PNG|JPG|QOI))?\s+begin\s+(\d+)x(\d+)\s+(\d+)")
_END: Final = re.compile(rb"^;\s*thumbnail(?:_(?:PNG|JPG|QOI))?\s+end")
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


def read_png(path: Path, *, scan_bytes: int = SCAN_BYTES) -> bytes | None:
    """Return the largest PNG thumbnail in a G-code file's head, or None when it has none."""
    with path.open("rb") as f:
        head = f.read(scan_bytes)
    best: tuple[int, bytes] | None = None
    chunks: list[bytes] | None = None
    area = 0
    for line in head.splitlines():
        if chunks is None:
            m = _BEGIN.match(line)
            if m is not None:
                fmt = (m.group(1) or b"PNG").decode()
                chunks = [] if fmt == "PNG" else None  # JPG and QOI: not shown (PNG only)
                area = int(m.group(2)) * int(m.group(3))
            continue
        if _END.match(line):
            try:
                data = base64.b64decode(b"".join(chunks), validate=True)
            except (binascii.Error, ValueError):
                data = b""
            if data.startswith(PNG_SIGNATURE) and (best is None or area > best[0]):
                best = (area, data)
            chunks = None
            continue
        chunks.append(line.lstrip(b";").strip())
    return best[1] if best else None


def file_of(job: Job, upload_dir: Path) -> Path:
    """Return the path of a job's G-code, or say why it has none (not sliced yet, deleted)."""
    if job.preparation != "ready" or not job.stored_name:
        raise NotFoundError(f"job {job.id} has no G-code yet")
    path = upload_dir / job.stored_name
    if (job.flags or {}).get("file_deleted_at") or not path.is_file():
        raise NotFoundError(
            f"the file of job {job.id} was deleted after the shop's retention period"
        )
    return path
