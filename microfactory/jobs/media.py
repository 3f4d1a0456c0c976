"""A job's G-code for the page's preview, and the images slicers embed in it.

The analysis keeps only their sizes (job.analysis["thumbnails"]); the image itself stays in the
file, in comment blocks at its head (PrusaSlicer, SuperSlicer, OrcaSlicer and Cura's plugin
write `; thumbnail begin 300x300 12345` … `; thumbnail end` before the first move). Reading
them again costs one bounded read of the file's first megabytes, and the response is cached by
the browser (the file never changes: its SHA-256 is the ETag).

A printer host may know more than the file tells us: Moonraker reads the slicer's estimate,
filament and thumbnails itself on upload (and turns QOI thumbnails, which PrusaSlicer writes
for Prusa and Klipper printers, into PNG). `apply_printer_metadata` adds what the analysis
lacks, and the host's PNG is kept next to the file (`printer_thumbnail_path`) when the file
has none we can show.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from microfactory.errors import NotFoundError
from microfactory.jobs.models import Job

#: how much of a file's head is searched; thumbnails come before the first layer
SCAN_BYTES: Final = 4 * 1024 * 1024
_BEGIN: Final = re.compile(rb"^;\s*thumbnail(?:_(PNG|JPG|QOI))?\s+begin\s+(\d+)x(\d+)\s+(\d+)")
_END: Final = re.compile(rb"^;\s*thumbnail(?:_(?:PNG|JPG|QOI))?\s+end")
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
#: the name of a printer host's thumbnail of a stored file, next to it
PRINTER_THUMBNAIL_SUFFIX: Final = ".printer-thumbnail.png"


def printer_thumbnail_path(upload_dir: Path, stored_name: str) -> Path:
    """Return where the printer host's thumbnail of a stored file is kept."""
    return upload_dir / f"{stored_name}{PRINTER_THUMBNAIL_SUFFIX}"


def read_thumbnail(path: Path) -> bytes | None:
    """Return the file's own largest PNG thumbnail, else the printer host's, else None."""
    png = read_png(path)
    if png is not None:
        return png
    kept = path.with_name(path.name + PRINTER_THUMBNAIL_SUFFIX)
    try:
        data = kept.read_bytes()
    except OSError:
        return None
    return data if data.startswith(PNG_SIGNATURE) else None


def largest_png(thumbnails: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """Return the largest PNG of a printer host's thumbnails (metadata_summary), if any."""
    pngs = [t for t in thumbnails if str(t.get("relative_path", "")).lower().endswith(".png")]
    return max(pngs, key=lambda t: int(t["width"]) * int(t["height"]), default=None)


def apply_printer_metadata(
    analysis: Mapping[str, Any],
    metadata: Mapping[str, Any],
    thumbnail: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the analysis with what the printer host read from the file where it had none.

    The host's figures go to `printer_metadata` as they are; the slicer's estimate, filament,
    name and version, and the layer height fill the analysis' own fields only when our reading
    of the file found none (our own are kept: they are the same slicer lines). `thumbnail` is
    the host's image kept next to the file; it is listed when the file has none we show.
    """
    out = dict(analysis)
    out["printer_metadata"] = {
        **{k: v for k, v in metadata.items() if k != "thumbnails"},
        "thumbnails": [
            {"width": t["width"], "height": t["height"]} for t in metadata.get("thumbnails", [])
        ],
    }
    for ours, theirs in (
        ("slicer_estimated_time_s", "estimated_time_s"),
        ("slicer_filament_mm", "filament_mm"),
        ("slicer_filament_g", "filament_g"),
        ("slicer", "slicer"),
        ("slicer_version", "slicer_version"),
    ):
        if out.get(ours) is None and metadata.get(theirs) is not None:
            out[ours] = metadata[theirs]
    layer = metadata.get("layer_height_mm")
    meta = dict(out.get("metadata") or {})
    if layer is not None and "layer_height" not in meta:
        meta["layer_height"] = f"{layer:g}"
        out["metadata"] = meta
    if thumbnail is not None and not out.get("thumbnails"):
        out["thumbnails"] = [
            {"width": thumbnail["width"], "height": thumbnail["height"], "source": "printer"}
        ]
    return out


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
