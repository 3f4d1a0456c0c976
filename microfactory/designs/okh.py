"""Open Know-How manifests (OKH v1 `okh.yml`, OKH-LOSH `okh.toml`) and safe zip reading."""

from __future__ import annotations

import posixpath
import re
import stat
import tomllib
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from microfactory.designs.storage import KINDS, write_stream
from microfactory.errors import InvalidInputError, PayloadTooLargeError
from microfactory.files import StoredFile

MAX_MANIFEST_BYTES = 256 * 1024
MAX_YAML_ALIASES = 50  # anchors and aliases can make a small file expand without end
MAX_NESTING = 32  # OKH manifests nest 3 or 4 levels; the parsers choke on thousands


@dataclass(frozen=True)
class ZipLimits:
    """What an uploaded archive may unpack to."""

    max_total_bytes: int  # uncompressed, all entries together
    max_file_bytes: int
    max_entries: int = 2000
    # Real design files compress 3-20x (measured: ASCII STL 5-8x, G-code 3-4x); zeros from
    # a zip bomb compress ~1000x. Checked on entries above 1 MiB, where bombs live.
    max_ratio: float = 200.0
    ratio_floor_bytes: int = 1024 * 1024


@dataclass
class Manifest:
    """What the library takes from an OKH manifest."""

    format: str  # "okh-v1" or "okh-losh"
    title: str
    description: str
    licence: str
    authors: list[str]
    source_url: str | None
    version: str | None
    tags: list[str]
    files: list[str]  # paths relative to the manifest, as written
    documentation_licence: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def is_manifest_name(name: str) -> bool:
    """Return whether a file name looks like an OKH manifest."""
    base = posixpath.basename(name).lower()
    return bool(re.fullmatch(r"(okh|okh[-_.].*|.*[-_.]okh)\.(ya?ml|toml)", base))


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _names(value: Any) -> list[str]:
    """Return people's names from a string, a {name: ...} mapping, or a list of either."""
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, dict):
        return _names(value.get("name"))
    if isinstance(value, list):
        return [n for item in value for n in _names(item)]
    return []


def _paths(value: Any) -> list[str]:
    """Return file paths from a string, a {path: ...} mapping, or a list of either."""
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, dict):
        return _paths(value.get("path") or value.get("url"))
    if isinstance(value, list):
        return [p for item in value for p in _paths(item)]
    return []


def bracket_depth(text: str) -> int:
    """Return the deepest nesting of [ and { in the text (YAML and TOML alike).

    One linear pass, before the parsers, which take quadratic time (PyYAML: 154 s for 20,000
    nested brackets) or recurse without bound (RecursionError) on deep nesting. Brackets in
    strings and comments count too: telling them apart needs the parser this protects, and
    an honest manifest has no 32 unclosed brackets in its text.
    """
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(depth - 1, 0)
    return deepest


def _load(data: bytes, name: str) -> dict[str, Any]:
    if len(data) > MAX_MANIFEST_BYTES:
        raise PayloadTooLargeError(f"the manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{name} is not UTF-8 text") from None
    depth = bracket_depth(text)
    if depth > MAX_NESTING:
        raise InvalidInputError(
            f"{name} nests lists or tables {depth} deep; a manifest needs at most {MAX_NESTING}"
        )
    try:
        if name.lower().endswith(".toml"):
            loaded: Any = tomllib.loads(text)
        else:
            aliases = sum(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text))
            if aliases > MAX_YAML_ALIASES:
                raise InvalidInputError(f"{name} uses too many YAML aliases ({aliases})")
            loaded = yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInputError(f"{name} is not a valid manifest: {exc}") from None
    except RecursionError:
        # Indented (block) nesting has no brackets; 256 KiB of it can still go too deep.
        raise InvalidInputError(f"{name} nests too deep to be a manifest") from None
    if not isinstance(loaded, dict):
        raise InvalidInputError(f"{name} is not a manifest: it holds no fields")
    return loaded


def parse_manifest(data: bytes, name: str) -> Manifest:
    """Map an OKH v1 or OKH-LOSH manifest onto the library's fields."""
    raw = _load(data, name)
    losh = name.lower().endswith(".toml") or "LOSH" in str(raw.get("okhv", "")).upper()
    title = _text(raw.get("title")) or _text(raw.get("name"))
    if not title:
        raise InvalidInputError(f"{name} has no title or name")
    licence_field = raw.get("license", raw.get("licence"))
    documentation_licence = None
    if isinstance(licence_field, dict):
        # OKH v1 splits the licence; the hardware licence governs the object we make.
        licence = _text(licence_field.get("hardware")) or _text(licence_field.get("documentation"))
        documentation_licence = _text(licence_field.get("documentation")) or None
    else:
        licence = _text(licence_field)
    if not licence:
        raise InvalidInputError(f"{name} has no license: an SPDX id is required")
    authors = list(
        dict.fromkeys(
            _names(raw.get("licensor"))
            + _names(raw.get("authors"))
            + _names(raw.get("contributors"))
            + _names(raw.get("organization"))
        )
    )
    source = None
    for key in ("repo", "project-link", "source-url", "documentation-home"):
        candidate = _text(raw.get(key))
        if candidate.startswith(("http://", "https://")):
            source = candidate
            break
    keywords = raw.get("keywords") or []
    if not isinstance(keywords, list):
        keywords = str(keywords).split(",")
    tags = [str(k).strip() for k in keywords if str(k).strip()]
    files = (
        _paths(raw.get("design-files"))
        + _paths(raw.get("manufacturing-files"))
        + _paths(raw.get("source"))
        + _paths(raw.get("export"))
    )
    version = raw.get("version")
    return Manifest(
        format="okh-losh" if losh else "okh-v1",
        title=title[:200],
        description=_text(raw.get("description")) or _text(raw.get("function")),
        licence=licence,
        authors=authors,
        source_url=source,
        version=str(version).strip()[:64] if version is not None else None,
        tags=tags,
        files=list(dict.fromkeys(files)),
        documentation_licence=documentation_licence,
        raw=raw,
    )


def resolve_reference(base: str, reference: str) -> str:
    """Return a manifest's file reference as a clean path beside the manifest; 422 if it
    points outside it."""
    ref = reference.replace("\\", "/")
    if ref.startswith(("http://", "https://")):
        raise InvalidInputError(
            f"the manifest references {reference!r} by URL; include the file in the upload"
        )
    if ref.startswith("/") or re.match(r"^[A-Za-z]:", ref):
        raise InvalidInputError(f"the manifest references an absolute path: {reference!r}")
    joined = posixpath.normpath(posixpath.join(base, ref)) if base else posixpath.normpath(ref)
    if joined == ".." or joined.startswith("../") or "/../" in joined:
        raise InvalidInputError(f"the manifest references a path outside it: {reference!r}")
    return joined


# -- zip archives --------------------------------------------------------------------------


def _check_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    if "\x00" in name or "\\" in name:
        raise InvalidInputError(f"the archive holds an unsafe path: {name!r}")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise InvalidInputError(f"the archive holds an absolute path: {name!r}")
    if ".." in name.split("/"):
        raise InvalidInputError(f"the archive holds a path that climbs out of it: {name!r}")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InvalidInputError(f"the archive holds a symbolic link: {name!r}")
    if info.flag_bits & 0x1:
        raise InvalidInputError(f"the archive holds an encrypted file: {name!r}")


def read_zip(path: Path, directory: Path, limits: ZipLimits) -> tuple[Manifest, list[StoredFile]]:
    """Check a whole archive, then unpack its manifest's files to generated names.

    Refuses path traversal, absolute paths, symbolic links, encrypted entries, too many
    entries, too much uncompressed data and suspicious compression ratios, before anything is
    written. Runs in a worker thread. On failure nothing it wrote remains.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise InvalidInputError("the upload is not a valid zip archive") from None
    written: list[StoredFile] = []
    try:
        with archive:
            infos = archive.infolist()
            if len(infos) > limits.max_entries:
                raise PayloadTooLargeError(
                    f"the archive holds {len(infos)} entries; the limit is {limits.max_entries}"
                )
            total = 0
            for info in infos:
                _check_member(info)
                total += info.file_size
                ratio = info.file_size / max(1, info.compress_size)
                if info.file_size > limits.ratio_floor_bytes and ratio > limits.max_ratio:
                    raise PayloadTooLargeError(
                        f"{info.filename!r} expands {ratio:.0f} times; this looks like a zip bomb"
                    )
            if total > limits.max_total_bytes:
                raise PayloadTooLargeError(
                    f"the archive unpacks to {total} bytes; the limit is {limits.max_total_bytes}"
                )
            files = {i.filename: i for i in infos if not i.is_dir()}
            manifests = sorted(
                (n for n in files if is_manifest_name(n)), key=lambda n: (n.count("/"), n)
            )
            if not manifests:
                raise InvalidInputError("the archive holds no OKH manifest (okh.yml or okh.toml)")
            top = [m for m in manifests if m.count("/") == manifests[0].count("/")]
            if len(top) > 1:
                raise InvalidInputError(
                    f"the archive holds several manifests: {', '.join(top)}; keep one"
                )
            manifest_name = manifests[0]
            with archive.open(files[manifest_name]) as fh:
                manifest = parse_manifest(fh.read(MAX_MANIFEST_BYTES + 1), manifest_name)
            base = posixpath.dirname(manifest_name)
            wanted = [resolve_reference(base, ref) for ref in manifest.files]
            if not wanted:
                # A manifest that names no files: take every design file beside it.
                wanted = [
                    n for n in files if n != manifest_name and n.startswith(base) and _keeps(n)
                ]
            budget = [limits.max_total_bytes]
            for member in dict.fromkeys(wanted):
                if member not in files:
                    raise InvalidInputError(
                        f"the manifest names {member!r}, which is not in the archive", file=member
                    )
                if not _keeps(member):
                    continue  # documentation, images: not design files
                with archive.open(files[member]) as fh:
                    written.append(
                        write_stream(
                            fh,
                            directory,
                            name=posixpath.basename(member),
                            limit=limits.max_file_bytes,
                            budget=budget,
                        )
                    )
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        for f in written:
            f.path.unlink(missing_ok=True)
        raise InvalidInputError(f"the zip archive is damaged: {exc}") from None
    except BaseException:
        for f in written:
            f.path.unlink(missing_ok=True)
        raise
    return manifest, written


def _keeps(name: str) -> bool:
    return Path(name).suffix.lower() in KINDS
