"""Storing and checking uploaded G-code: generated names, size limits, text-only."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from starlette.datastructures import UploadFile

from drivers.base import clean_lines
from microfactory.errors import InvalidInputError, PayloadTooLargeError, storage_full

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredFile:
    """An upload saved under a name we generated."""

    path: Path
    stored_name: str
    original_name: str
    sha256: str
    size: int


def safe_display_name(name: str | None) -> str:
    """Return a file name fit for display: no directories, no control characters."""
    base = os.path.basename((name or "upload.gcode").replace("\\", "/"))
    cleaned = "".join(ch for ch in base if ch.isprintable())[:200]
    return cleaned or "upload.gcode"


async def store_upload(upload: UploadFile, directory: Path, limit: int, suffix: str) -> StoredFile:
    """Stream an upload to disk under a generated name, refusing it past `limit` bytes."""
    stored_name = f"{uuid.uuid4().hex}{suffix}"
    path = directory / stored_name
    digest = hashlib.sha256()
    size = 0
    # Disk writes go to a worker thread: a 200 MB upload must not stall the event loop.
    try:
        fh = await asyncio.to_thread(_open_new, path)
    except OSError as exc:
        raise storage_full(exc) or exc from None
    try:
        while chunk := await upload.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"the file is larger than the limit of {limit} bytes")
            digest.update(chunk)
            await asyncio.to_thread(fh.write, chunk)
        await asyncio.to_thread(fh.close)
    except BaseException as exc:
        discard_partial(fh, path)
        full = storage_full(exc)
        if full is not None:
            raise full from None
        raise
    return StoredFile(
        path, stored_name, safe_display_name(upload.filename), digest.hexdigest(), size
    )


def discard_partial(fh: BinaryIO, path: Path) -> None:
    """Close and delete a file whose writing failed (closing may fail again on a full disk)."""
    with contextlib.suppress(OSError):
        fh.close()
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _open_new(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("xb")


_CHECK_CHUNK = 4 << 20  # read in slices of whole lines: memory stays bounded at any size


def iter_program(path: Path) -> Iterator[str]:
    """Check that a file is non-empty UTF-8 G-code text while yielding its command lines.

    Reads the file in 4 MiB slices of whole lines, so a 200 MiB upload is checked in bounded
    memory (a 6 MB file takes tens of milliseconds); run it in a worker thread.
    """
    count = 0
    offset = 0
    blank = True
    with path.open("rb") as fh:
        rest = b""
        while True:
            block = fh.read(_CHECK_CHUNK)
            data = rest + block
            if block:
                cut = data.rfind(b"\n") + 1
                data, rest = (data[:cut], data[cut:]) if cut else (b"", data)
            else:
                rest = b""
            if data:
                if offset < 1024 * 1024 and b"\x00" in data[: 1024 * 1024 - offset]:
                    raise InvalidInputError(
                        "this is a binary file, not G-code text (binary G-code is not supported)"
                    )
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InvalidInputError(
                        "the G-code file is not UTF-8 text "
                        f"(bad byte at offset {offset + exc.start})"
                    ) from None
                blank = blank and not text.strip()
                lines = clean_lines(text.splitlines())
                count += len(lines)
                yield from lines
                offset += len(data)
            if not block:
                break
    if blank:
        raise InvalidInputError("the G-code file is empty")
    if not count:
        raise InvalidInputError("the file holds no G-code commands, only comments or blank lines")


def check_gcode_file(path: Path) -> int:
    """Check that a file is non-empty UTF-8 G-code text; return its count of command lines."""
    return sum(1 for _ in iter_program(path))
