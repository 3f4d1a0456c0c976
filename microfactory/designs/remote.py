"""Designs across shops: fetch a design by content hash from another shop, verify, keep.

The source shop serves `GET <shop>/api/v1/designs/by-hash/<sha256>` (metadata with every
file's name, SHA-256 and size) and `.../files/<file_sha256>` (the bytes). An import:

- refuses a licence that grants no right to redistribute (licences.redistribution_refusal);
- checks that the listed files hash to the asked content hash, and every fetched file to its
  listed SHA-256: a mismatch is refused with the file named, and nothing is stored;
- keeps licence, authors and source as the source shop gave them, and records the provenance
  chain (the source's hops, then this one: which shop, when, under which hash);
- answers with the design already held under the same hash instead of a copy.

The fetcher is a makerspace server's client, not a browser: only http and https; no
credentials in URLs; no redirect to another origin; no link-local, multicast or unspecified
addresses (cloud metadata services live at 169.254.169.254). Loopback and private (LAN)
addresses are allowed, since shops and hubs often run on a local network. Each request has
timeouts, each file the upload limit, and the whole import an overall deadline.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import json
import logging
import re
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.accounts.models import User
from microfactory.config import Settings
from microfactory.db import utcnow
from microfactory.designs import service
from microfactory.designs.licences import normalise_licence, redistribution_refusal
from microfactory.designs.models import Design, DesignProvenance
from microfactory.designs.schemas import DesignMetadata, build_create
from microfactory.designs.storage import MAX_FILES, content_hash, discard, file_kind
from microfactory.errors import ConflictError, InvalidInputError, PayloadTooLargeError
from microfactory.files import StoredFile, safe_display_name

log = logging.getLogger(__name__)

BY_HASH = "/api/v1/designs/by-hash/"
_BY_HASH_URL = re.compile(r"^(?P<base>.*?)/api/v1/designs/by-hash/(?P<hash>[0-9a-f]{64})/?$")
_HASH = re.compile(r"^[0-9a-f]{64}$")
METADATA_MAX_BYTES = 1024 * 1024  # 50 files' names and hashes take ~10 KiB
SHOPS_MAX_BYTES = 4 * 1024 * 1024  # a hub's shop list
MAX_REDIRECTS = 3
MAX_HOPS = 50  # provenance hops copied from the source
# Per request: a peer that does not answer within 10 s, or stalls 30 s mid-file, is given up.
REQUEST_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
IMPORT_DEADLINE_S = 600.0  # the whole import: metadata and every file
CHUNK = 256 * 1024


@dataclass(frozen=True)
class Source:
    """Where a design is fetched from."""

    base_url: str  # the shop's base URL, without a trailing slash
    content_hash: str
    shop_id: str | None = None

    @property
    def metadata_url(self) -> str:
        """Return the design's by-hash URL at the source shop."""
        return f"{self.base_url}{BY_HASH}{self.content_hash}"

    def file_url(self, sha256: str) -> str:
        """Return one file's URL at the source shop."""
        return f"{self.metadata_url}/files/{sha256}"


class RemoteError(InvalidInputError):
    """The other shop could not be reached, or answered something this shop cannot use."""


# -- where from ----------------------------------------------------------------------------


def check_url(url: str) -> str:
    """Return an http(s) URL without a trailing slash; 422 for anything else."""
    try:
        parts = urlsplit(url.strip())
        _ = parts.port, parts.hostname
    except ValueError:
        raise InvalidInputError(f"{url[:200]!r} is not a valid URL") from None
    if any(ch.isspace() or not ch.isprintable() for ch in url.strip()):
        raise InvalidInputError(f"{url[:200]!r}: a URL has no spaces or control characters")
    if parts.scheme not in ("http", "https"):
        raise InvalidInputError(f"{url!r}: only http:// and https:// URLs can be fetched")
    if not parts.hostname:
        raise InvalidInputError(f"{url!r} names no host")
    if parts.username or parts.password:
        raise InvalidInputError(f"{url!r}: credentials in a URL are not sent to other shops")
    if parts.query or parts.fragment:
        raise InvalidInputError(f"{url!r}: a shop URL carries no query or fragment")
    return url.strip().rstrip("/")


def source_from_url(url: str, content_hash: str | None = None) -> Source:
    """Return the source named by a by-hash URL, or by a shop's base URL and a hash."""
    clean = check_url(url)
    match = _BY_HASH_URL.match(clean)
    if match:
        if content_hash and content_hash != match["hash"]:
            raise InvalidInputError("the URL and `hash` name two different designs")
        return Source(base_url=match["base"], content_hash=match["hash"])
    if BY_HASH.rstrip("/") in clean:
        raise InvalidInputError(
            f"{url!r}: the hash in a by-hash URL must be 64 lower-case hex characters"
        )
    if content_hash is None:
        raise InvalidInputError(
            f"{url!r} is not a by-hash URL (<shop>{BY_HASH}<sha256>); give the design's "
            '"hash" with a shop\'s base URL'
        )
    return Source(base_url=clean, content_hash=content_hash)


def _hubs(settings: Settings) -> list[str]:
    # The hub list is the network package's setting; absent, this shop knows no hub.
    value: Any = getattr(settings, "network_hubs", None)
    if not value:
        return []
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value) if v]
    return [str(v) for v in value]


def _shop_entries(data: Any) -> list[dict[str, Any]]:
    items = data.get("shops", []) if isinstance(data, dict) else data
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _shop_url(entry: dict[str, Any]) -> str | None:
    for holder in (entry, entry.get("profile"), entry.get("report")):
        if isinstance(holder, dict) and isinstance(holder.get("url"), str):
            return str(holder["url"])
    return None


async def source_from_hub(*, settings: Settings, shop_id: str, content_hash: str) -> Source:
    """Find a shop's URL in the shop list of this shop's hubs; 422 when no hub knows it."""
    hubs = _hubs(settings)
    if not hubs:
        raise InvalidInputError(
            'no hub is configured (MICROFACTORY_NETWORK_HUBS): give the design\'s "url" instead'
        )
    problems = []
    async with _client() as client:
        for hub in hubs:
            url = f"{check_url(hub)}/api/v1/network/shops"
            try:
                data = json.loads(await _get_bytes(client, url, SHOPS_MAX_BYTES))
            except (RemoteError, PayloadTooLargeError, ValueError) as exc:
                problems.append(f"{hub}: {exc}")
                continue
            for entry in _shop_entries(data):
                if shop_id in (entry.get("shop_id"), entry.get("id")):
                    found = _shop_url(entry)
                    if found:
                        return Source(check_url(found), content_hash, shop_id=shop_id)
            problems.append(f"{hub} lists no shop {shop_id} with a URL")
    raise InvalidInputError(
        f"no configured hub knows shop {shop_id}: " + "; ".join(problems), shop=shop_id
    )


# -- fetching ------------------------------------------------------------------------------


async def _check_host(url: str) -> None:
    """Refuse hosts that resolve to link-local, multicast, reserved or unspecified addresses."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise RemoteError(
            f"cannot resolve {host}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if (
            address.is_link_local
            or address.is_multicast
            or address.is_unspecified
            or (address.is_reserved and not address.is_private)
        ):
            raise RemoteError(f"{host} resolves to {address}, which this shop does not fetch from")


@asynccontextmanager
async def _client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        timeout=REQUEST_TIMEOUT,
        follow_redirects=False,
        trust_env=False,  # no proxy or netrc credentials from the server's environment
        headers={"Accept": "application/json, application/octet-stream"},
    ) as client:
        yield client


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


@asynccontextmanager
async def _stream(client: httpx.AsyncClient, url: str) -> AsyncIterator[httpx.Response]:
    """Open a GET, following redirects only within the same origin; 422 on a failed answer."""
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        await _check_host(current)
        try:
            async with client.stream("GET", current) as response:
                if response.is_redirect:
                    target = urljoin(current, response.headers.get("location", ""))
                    if _origin(target) != _origin(url):
                        raise RemoteError(
                            f"{current} redirects to another host ({target}): not followed"
                        )
                    current = target
                    continue
                if response.status_code != 200:
                    detail = ""
                    try:
                        body = json.loads((await response.aread())[:4096])
                        detail = f": {body.get('detail')}" if isinstance(body, dict) else ""
                    except (ValueError, httpx.HTTPError):
                        pass
                    raise RemoteError(
                        f"{current} answered {response.status_code}{detail}",
                        status=response.status_code,
                    )
                yield response
                return
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise RemoteError(f"cannot fetch {current}: {type(exc).__name__} {exc}") from None
    raise RemoteError(f"{url} redirects more than {MAX_REDIRECTS} times")


async def _get_bytes(client: httpx.AsyncClient, url: str, limit: int) -> bytes:
    async with _stream(client, url) as response:
        body = bytearray()
        async for chunk in response.aiter_bytes(CHUNK):
            body += chunk
            if len(body) > limit:
                raise PayloadTooLargeError(f"{url} answered more than {limit} bytes")
        return bytes(body)


async def _download(
    client: httpx.AsyncClient, url: str, directory: Path, *, name: str, size: int, limit: int
) -> StoredFile:
    """Stream one file to a new generated name, hashing it, refusing past its size or limit."""
    stored_name = f"{uuid.uuid4().hex}{Path(name).suffix.lower()}"
    path = directory / stored_name
    digest = hashlib.sha256()
    written = 0
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    fh = await asyncio.to_thread(path.open, "xb")
    try:
        async with _stream(client, url) as response:
            async for chunk in response.aiter_bytes(CHUNK):
                written += len(chunk)
                if written > min(size, limit):
                    raise (
                        PayloadTooLargeError(
                            f"{name} is larger than the upload limit of {limit} bytes", file=name
                        )
                        if written > limit
                        else InvalidInputError(
                            f"hash mismatch in {name}: the source served more than the {size} "
                            "bytes it lists; refused, nothing was imported",
                            file=name,
                        )
                    )
                digest.update(chunk)
                await asyncio.to_thread(fh.write, chunk)
        await asyncio.to_thread(fh.close)
    except BaseException:
        fh.close()
        path.unlink(missing_ok=True)
        raise
    return StoredFile(path, stored_name, name, digest.hexdigest(), written)


# -- checking ------------------------------------------------------------------------------


def parse_metadata(raw: bytes, source: Source) -> DesignMetadata:
    """Parse and check a source's metadata: its hash, file names, kinds, sizes and licence."""
    try:
        meta = DesignMetadata.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise RemoteError(
            f"{source.metadata_url} did not answer design metadata: {problems}"
        ) from None
    if meta.content_hash != source.content_hash:
        raise RemoteError(
            f"{source.metadata_url} answered the design {meta.content_hash}, not the one asked"
        )
    if not meta.files or len(meta.files) > MAX_FILES:
        raise RemoteError(
            f"a design holds 1 to {MAX_FILES} files; the source lists {len(meta.files)}"
        )
    names = [f.path for f in meta.files]
    for name in names:
        if safe_display_name(name) != name:
            raise RemoteError(f"the source lists a file named {name!r}, which is not a plain name")
        file_kind(name)
    if len(set(names)) != len(names):
        raise RemoteError("the source lists two files under the same name")
    listed = content_hash((f.path, f.sha256) for f in meta.files)
    if listed != source.content_hash:
        raise RemoteError(
            f"the files the source lists hash to {listed}, not to the design's hash "
            f"{source.content_hash}: refused, nothing was imported"
        )
    refusal = redistribution_refusal(meta.licence)
    if refusal:
        raise InvalidInputError(
            f"{meta.title!r} cannot be imported: its licence {meta.licence} grants no right to "
            f"redistribute it ({refusal})",
            licence=meta.licence,
        )
    return meta


def _provenance(
    meta: DesignMetadata, source: Source, user: User | None, fetched_at: dt.datetime
) -> list[DesignProvenance]:
    for hop in meta.provenance:
        if (
            not _HASH.match(hop.content_hash)
            or len(hop.shop_id or "") > 128
            or hop.fetched_at.tzinfo is None
        ):
            raise RemoteError("the source's provenance chain is malformed: refused")
    hops = [
        DesignProvenance(
            position=i,
            shop_url=hop.shop_url[:500],
            shop_id=hop.shop_id,
            source_url=hop.source_url[:1000],
            content_hash=hop.content_hash,
            fetched_at=hop.fetched_at,
        )
        for i, hop in enumerate(meta.provenance[-MAX_HOPS:])
    ]
    hops.append(
        DesignProvenance(
            position=len(hops),
            shop_url=source.base_url,
            shop_id=source.shop_id,
            source_url=source.metadata_url,
            content_hash=source.content_hash,
            fetched_at=fetched_at,
            imported_by_id=user.id if user else None,
        )
    )
    return hops


# -- importing -----------------------------------------------------------------------------


async def held_design(*, session: AsyncSession, user: User, source: Source) -> Design | None:
    """Return the design this shop already holds under the source's hash, if any.

    A design held privately by someone else is a 409: the hash is unique here, so it cannot
    be imported a second time, and it is not the importer's to see.
    """
    held = await service.get_by_hash(session=session, content_hash=source.content_hash)
    if held is not None and not service.can_see(held, user):
        raise ConflictError(
            "this shop already holds that design, privately; ask its author to share it"
        )
    return held


@dataclass
class Fetched:
    """A design fetched and verified, its files stored under generated names."""

    source: Source
    meta: DesignMetadata
    files: list[StoredFile]
    fetched_at: dt.datetime


async def fetch_design(*, settings: Settings, source: Source) -> Fetched:
    """Fetch a design's metadata and files and verify every hash; nothing is kept on refusal.

    Needs no database: the caller ends its transaction first, so a fetch that takes minutes
    holds no lock and no connection.
    """
    stored: list[StoredFile] = []
    try:
        async with asyncio.timeout(IMPORT_DEADLINE_S), _client() as client:
            raw = await _get_bytes(client, source.metadata_url, METADATA_MAX_BYTES)
            meta = parse_metadata(raw, source)
            for f in meta.files:
                if f.size > settings.max_upload_bytes:
                    raise PayloadTooLargeError(
                        f"{f.path} is {f.size} bytes, over the upload limit of "
                        f"{settings.max_upload_bytes} bytes",
                        file=f.path,
                    )
            for f in meta.files:
                got = await _download(
                    client,
                    source.file_url(f.sha256),
                    settings.upload_dir,
                    name=f.path,
                    size=f.size,
                    limit=settings.max_upload_bytes,
                )
                stored.append(got)
                if got.sha256 != f.sha256:
                    raise InvalidInputError(
                        f"hash mismatch in {f.path}: the source lists SHA-256 {f.sha256}, the "
                        f"bytes it served hash to {got.sha256}; refused, nothing was imported",
                        file=f.path,
                        expected=f.sha256,
                        actual=got.sha256,
                    )
                if got.size != f.size:
                    raise InvalidInputError(
                        f"{f.path} is {got.size} bytes, not the {f.size} the source lists",
                        file=f.path,
                    )
    except TimeoutError:
        await asyncio.to_thread(discard, stored)
        raise RemoteError(
            f"fetching {source.metadata_url} took longer than {IMPORT_DEADLINE_S:.0f} s"
        ) from None
    except BaseException:
        await asyncio.to_thread(discard, stored)
        raise
    return Fetched(source=source, meta=meta, files=stored, fetched_at=utcnow())


async def keep_design(
    *, session: AsyncSession, settings: Settings, user: User, fetched: Fetched
) -> tuple[Design, bool]:
    """Add a fetched design with its licence, authors, source and provenance; (design, created).

    A design added under the same hash meanwhile is answered instead (the copies discarded).
    """
    meta, source = fetched.meta, fetched.source
    try:
        design_in = build_create(
            title=meta.title,
            description=meta.description,
            licence=normalise_licence(meta.licence),
            authors=meta.authors,
            source_url=meta.source_url,
            version=meta.version,
            # Only a content hash names a design across shops; a bare id is the source's own.
            derivative_of=meta.derivative_of
            if meta.derivative_of and _HASH.match(meta.derivative_of)
            else None,
            tags=meta.tags,
        )
        provenance = _provenance(meta, source, user, fetched.fetched_at)
    except BaseException:
        await asyncio.to_thread(discard, fetched.files)
        raise
    design, created = await service.create(
        session=session,
        owner=user,
        design_in=design_in,
        files=fetched.files,
        limits=service.mesh_limits(settings),
        provenance=provenance,
    )
    if created:
        log.info(
            "design %s imported from %s (%s files)",
            design.content_hash,
            source.base_url,
            len(fetched.files),
        )
    return design, created


def metadata(design: Design, *, derivative_of: str | None) -> DesignMetadata:
    """Return a design's by-hash metadata, as other shops read it."""
    read = service.to_read(design)
    return DesignMetadata.model_validate(
        {
            "content_hash": design.content_hash,
            "title": design.title,
            "description": design.description,
            "licence": design.licence,
            "licence_flags": read.licence_flags,
            "authors": list(design.authors or []),
            "source_url": design.source_url,
            "version": design.version,
            "derivative_of": derivative_of,
            "tags": list(design.tags or []),
            "provenance": [service.provenance_read(p) for p in design.provenance],
            "files": [
                {"path": f.name, "sha256": f.sha256, "size": f.size_bytes, "kind": f.kind}
                for f in design.files
            ],
        }
    )


__all__: Sequence[str] = [
    "Source",
    "check_url",
    "fetch_design",
    "held_design",
    "keep_design",
    "metadata",
    "parse_metadata",
    "source_from_hub",
    "source_from_url",
]
