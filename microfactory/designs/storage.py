"""Design files on disk: kinds, generated names, hashing, and the design's content hash."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

from fastapi import UploadFile

from microfactory.errors import InvalidInputError, PayloadTooLargeError, storage_full
from microfactory.files import StoredFile, discard_partial, safe_display_name, store_upload

CHUNK = 1024 * 1024
MAX_FILES = 50

# Extension -> kind. The kind decides what analysis a file gets and how it becomes G-code.
KINDS: dict[str, str] = {
    ".stl": "stl",
    ".3mf": "3mf",
    ".scad": "scad",
    ".gcode": "gcode",
    ".gco": "gcode",
    ".g": "gcode",
    ".nc": "gcode",
    ".ngc": "gcode",
    ".svg": "svg",
    ".dxf": "dxf",
}


def file_kind(name: str) -> str:
    """Return a design file's kind from its name; 422 for a type the library does not keep."""
    kind = KINDS.get(Path(name).suffix.lower())
    if kind is None:
        allowed = ", ".join(sorted(KINDS))
        raise InvalidInputError(
            f"{name!r} is not a design file the library keeps; allowed types: {allowed}",
            file=name,
        )
    return kind


def content_hash(files: Iterable[tuple[str, str]]) -> str:
    """Return a design's content hash from (file name, file SHA-256 hex) pairs.

    SHA-256 over, for each file sorted by the UTF-8 bytes of its name: the name, a NUL byte,
    and the file's SHA-256 in lower-case hex. The order of upload never matters, and any shop
    computes the same hash from the same files.
    """
    digest = hashlib.sha256()
    for name, sha in sorted(files, key=lambda f: f[0].encode("utf-8")):
        digest.update(name.encode("utf-8") + b"\0" + sha.lower().encode("ascii"))
    return digest.hexdigest()


def discard(files: Iterable[StoredFile]) -> None:
    """Delete stored files that will not be kept."""
    for f in files:
        f.path.unlink(missing_ok=True)


async def store_uploads(
    uploads: Sequence[UploadFile], directory: Path, limit: int, *, allow_zip: bool = False
) -> list[StoredFile]:
    """Store uploads under generated names; on any refusal, nothing stays on disk."""
    if not uploads:
        raise InvalidInputError("upload at least one file")
    if len(uploads) > MAX_FILES:
        raise InvalidInputError(f"a design holds at most {MAX_FILES} files")
    stored: list[StoredFile] = []
    try:
        for upload in uploads:
            name = safe_display_name(upload.filename or "")
            lowered = name.lower()
            if allow_zip and lowered.endswith(".zip"):
                suffix = ".zip"
            elif allow_zip and lowered.endswith((".yml", ".yaml", ".toml")):
                suffix = Path(lowered).suffix
            else:
                suffix = Path(lowered).suffix if file_kind(name) else ""
            stored.append(await store_upload(upload, directory, limit, suffix))
    except BaseException:
        await asyncio.to_thread(discard, stored)
        raise
    return stored


def write_stream(
    source: IO[bytes], directory: Path, *, name: str, limit: int, budget: list[int]
) -> StoredFile:
    """Copy a stream to a new generated file, hashing it; refuse past `limit` or the budget.

    `budget` is a one-item list of bytes still allowed across several files (a zip's total):
    the count is of bytes really read, so a zip entry that lies about its size is caught.
    """
    stored_name = f"{uuid.uuid4().hex}{Path(name).suffix.lower()}"
    path = directory / stored_name
    digest = hashlib.sha256()
    size = 0
    directory.mkdir(parents=True, exist_ok=True)
    try:
        out = path.open("xb")
    except OSError as exc:
        raise storage_full(exc) or exc from None
    try:
        with out:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                budget[0] -= len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(
                        f"{name!r} is larger than the limit of {limit} bytes", file=name
                    )
                if budget[0] < 0:
                    raise PayloadTooLargeError(
                        "the archive unpacks to more than the allowed total size"
                    )
                digest.update(chunk)
                out.write(chunk)
    except BaseException as exc:
        discard_partial(out, path)
        full = storage_full(exc)
        if full is not None:
            raise full from None
        raise
    return StoredFile(path, stored_name, name, digest.hexdigest(), size)
