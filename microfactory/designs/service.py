"""Design library rules: content addressing, licences, analysis, OKH import, parameters."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory import analysis
from microfactory.accounts.models import Role, User
from microfactory.analysis.mesh import MeshLimits
from microfactory.config import Settings
from microfactory.designs import okh
from microfactory.designs.licences import attribution, licence_flags, normalise_licence
from microfactory.designs.models import Design, DesignFile, DesignProvenance, Visibility
from microfactory.designs.schemas import DesignCreate, DesignRead, build_create
from microfactory.designs.storage import KINDS, content_hash, discard, file_kind
from microfactory.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from microfactory.fabrication import customizer
from microfactory.fabrication.pipeline import compact_analysis
from microfactory.files import StoredFile

__all__ = [
    "attribution",
    "can_edit_visibility",
    "can_see",
    "check_parameters",
    "create",
    "file_path",
    "get_by_hash",
    "get_file_or_raise",
    "get_or_raise",
    "get_visible_by_hash",
    "get_visible_or_raise",
    "import_okh",
    "licence_flags",
    "list_designs",
    "parameter_schema",
    "parametric_file",
    "resolve_parameters",
    "set_visibility",
    "to_read",
]

SEARCH_LIMIT = 200


def file_path(settings: Settings, design_file: DesignFile) -> Path:
    """Return where a design file is stored."""
    return settings.upload_dir / design_file.stored_name


async def get_or_raise(*, session: AsyncSession, design_id: int) -> Design:
    """Return a design by id or raise NotFoundError."""
    design = await session.get(Design, design_id)
    if design is None:
        raise NotFoundError(f"design {design_id} not found")
    return design


async def get_by_hash(*, session: AsyncSession, content_hash: str) -> Design | None:
    """Return the design with this content hash, if the library has it."""
    stmt = select(Design).where(Design.content_hash == content_hash.lower())
    return (await session.execute(stmt)).scalar_one_or_none()


# -- visibility ----------------------------------------------------------------------------
#
# public: every member, and anyone (other shops) when network publishing is on;
# shop: every signed-in member of this shop; private: its author, and the shop's admins (who
# run the server and answer for what it holds). A design the caller may not see is answered
# as not found, exactly like a design that does not exist.


def can_see(design: Design, user: User | None, *, publishing: bool = False) -> bool:
    """Tell whether a caller (None: anonymous) may see a design."""
    if user is None:
        return publishing and design.visibility == Visibility.PUBLIC
    if design.visibility in (Visibility.PUBLIC, Visibility.SHOP):
        return True
    return design.created_by_id == user.id or user.role is Role.ADMIN


def can_edit_visibility(design: Design, user: User) -> bool:
    """Tell whether a user may change who sees a design: its author and admins."""
    return user.role is Role.ADMIN or (
        design.created_by_id is not None and design.created_by_id == user.id
    )


def visible_clause(user: User) -> ColumnElement[bool]:
    """Return the SQL condition that keeps the designs a signed-in user may see."""
    if user.role is Role.ADMIN:
        return Design.id.is_not(None)
    return or_(
        Design.visibility.in_([Visibility.PUBLIC.value, Visibility.SHOP.value]),
        and_(Design.visibility == Visibility.PRIVATE.value, Design.created_by_id == user.id),
    )


def _hidden(what: str) -> NotFoundError:
    return NotFoundError(f"{what} not found")


async def get_visible_or_raise(*, session: AsyncSession, design_id: int, user: User) -> Design:
    """Return a design the user may see, or raise NotFoundError (also when it is hidden)."""
    design = await session.get(Design, design_id)
    if design is None or not can_see(design, user):
        raise _hidden(f"design {design_id}")
    return design


async def get_visible_by_hash(
    *, session: AsyncSession, content_hash: str, user: User | None, publishing: bool
) -> Design:
    """Return the design with this content hash if the caller may see it, else NotFoundError."""
    design = await get_by_hash(session=session, content_hash=content_hash)
    if design is None or not can_see(design, user, publishing=publishing):
        raise _hidden(f"no design with content hash {content_hash} here:")
    return design


async def set_visibility(
    *, session: AsyncSession, design: Design, user: User, visibility: Visibility
) -> Design:
    """Change who may see a design (its author and admins)."""
    if not can_edit_visibility(design, user):
        raise PermissionDeniedError("only the design's author or an admin may change who sees it")
    design.visibility = Visibility(visibility).value
    await session.flush()
    return design


def get_file_or_raise(design: Design, file_id: int) -> DesignFile:
    """Return one of a design's files or raise NotFoundError."""
    for f in design.files:
        if f.id == file_id:
            return f
    raise NotFoundError(f"design {design.id} has no file {file_id}")


async def list_designs(
    *,
    session: AsyncSession,
    user: User | None,
    q: str | None = None,
    limit: int = SEARCH_LIMIT,
    offset: int = 0,
) -> list[Design]:
    """Return the designs a user may see, newest first; `q` matches every word in title,
    description, authors, licence or tags. `user=None` is the shop itself (every design)."""
    stmt = select(Design).order_by(Design.id.desc()).limit(min(limit, SEARCH_LIMIT))
    if user is not None:
        stmt = stmt.where(visible_clause(user))
    if offset:
        stmt = stmt.offset(offset)
    for word in (q or "").lower().split()[:10]:
        stmt = stmt.where(Design.search_text.contains(word, autoescape=True))
    return list((await session.execute(stmt)).scalars())


def _search_text(design: Design) -> str:
    parts = [design.title, design.description, design.licence, *design.authors, *design.tags]
    return " ".join(p for p in parts if p).lower()


def to_read(design: Design) -> DesignRead:
    """Build the API view of a design, with its licence flags and attribution."""
    return DesignRead.model_validate(
        {
            "id": design.id,
            "content_hash": design.content_hash,
            "title": design.title,
            "description": design.description,
            "licence": design.licence,
            "licence_flags": licence_flags(design.licence),
            "authors": design.authors or [],
            "source_url": design.source_url,
            "version": design.version,
            "derivative_of": design.derivative_of,
            "tags": design.tags or [],
            "files": [
                {
                    "id": f.id,
                    "name": f.name,
                    "kind": f.kind,
                    "size_bytes": f.size_bytes,
                    "sha256": f.sha256,
                    "analysis": f.analysis or {},
                }
                for f in design.files
            ],
            "attribution": attribution(design),
            "okh": design.okh,
            "created_by_id": design.created_by_id,
            "visibility": design.visibility,
            "provenance": [provenance_read(p) for p in design.provenance],
            "created_at": design.created_at,
            "updated_at": design.updated_at,
        }
    )


def provenance_read(hop: DesignProvenance) -> dict[str, Any]:
    """Return one hop of a design's provenance chain as the API shows it."""
    return {
        "shop_url": hop.shop_url,
        "shop_id": hop.shop_id,
        "source_url": hop.source_url,
        "content_hash": hop.content_hash,
        "fetched_at": hop.fetched_at,
    }


async def derivative_hash(*, session: AsyncSession, design: Design) -> str | None:
    """Return what a design derives from as a content hash, which names it in every shop.

    A local design id is translated to that design's hash; an id this shop no longer holds
    cannot name anything elsewhere and is left out.
    """
    parent = design.derivative_of
    if parent and parent.isdigit():
        found = await session.get(Design, int(parent))
        return found.content_hash if found else None
    return parent


# -- analysis ------------------------------------------------------------------------------


def _check_scad(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError("an OpenSCAD file must be UTF-8 text") from None
    params = customizer.parse_customizer(text)
    return {"parametric": bool(params), "parameters": len(params)}


def mesh_limits(settings: Settings) -> MeshLimits:
    """Return the mesh caps of these settings."""
    return MeshLimits(
        max_triangles=settings.mesh_max_triangles, max_vertices=settings.mesh_max_vertices
    )


async def analyse_file(
    path: Path, kind: str, name: str, *, limits: MeshLimits | None = None
) -> dict[str, Any]:
    """Analyse one design file: meshes and G-code by microfactory.analysis; 422 if corrupt."""
    limits = limits or MeshLimits()
    try:
        if kind == "gcode":
            result = await analysis.analyse_gcode_async(path)
            return compact_analysis(result.as_dict())
        if kind == "stl":
            return (await asyncio.to_thread(analysis.analyse_stl, path, limits=limits)).as_dict()
        if kind == "3mf":
            return (await asyncio.to_thread(analysis.analyse_3mf, path, limits=limits)).as_dict()
        if kind == "scad":
            return await asyncio.to_thread(_check_scad, path)
    except analysis.AnalysisError as exc:
        raise InvalidInputError(f"{name}: {exc}", file=name) from None
    return {}


# -- creating ------------------------------------------------------------------------------


async def _check_derivative(
    session: AsyncSession, derivative_of: str | None, *, refuse_nd: bool = True
) -> None:
    if not derivative_of:
        return
    if derivative_of.isdigit():
        parent = await session.get(Design, int(derivative_of))
        if parent is None:
            raise InvalidInputError(f"derivative_of names design {derivative_of}, which is unknown")
    else:
        parent = await get_by_hash(session=session, content_hash=derivative_of)
    if refuse_nd and parent is not None and licence_flags(parent.licence)["nd"]:
        # The same rule as the Customizer's: an ND design is made only as published, so this
        # shop records no derivative of it (an imported ND design arrives read-only too).
        raise ConflictError(
            f"{parent.title!r} is licensed {parent.licence}, a no-derivatives (ND) licence: "
            "no derivative of it can be added; ask its authors for permission",
            licence=parent.licence,
        )


async def create(
    *,
    session: AsyncSession,
    owner: User | None,
    design_in: DesignCreate,
    files: Sequence[StoredFile],
    okh_record: dict[str, Any] | None = None,
    limits: MeshLimits | None = None,
    visibility: Visibility = Visibility.SHOP,
    provenance: Sequence[DesignProvenance] = (),
) -> tuple[Design, bool]:
    """Add a design from stored files; return (design, created).

    The same files (by content hash) find the existing design, and the new copies are
    discarded. Every file is analysed; any refusal deletes every stored file, so nothing is
    left half-made.
    """
    kept = False
    try:
        licence = normalise_licence(design_in.licence)
        if not files:
            raise InvalidInputError("a design needs at least one file")
        kinds = [file_kind(f.original_name) for f in files]
        names = [f.original_name for f in files]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InvalidInputError(
                f"two files share the name {duplicates[0]!r}; names must be unique in a design"
            )
        digest = content_hash((f.original_name, f.sha256) for f in files)
        existing = await get_by_hash(session=session, content_hash=digest)
        if existing is not None:
            return existing, False
        # An import keeps what its source says it derives from: the rule is the source's.
        await _check_derivative(session, design_in.derivative_of, refuse_nd=not provenance)
        records = []
        for f, kind in zip(files, kinds, strict=True):
            if f.size == 0:
                raise InvalidInputError(f"{f.original_name} is empty", file=f.original_name)
            records.append(
                DesignFile(
                    name=f.original_name,
                    kind=kind,
                    stored_name=f.stored_name,
                    sha256=f.sha256,
                    size_bytes=f.size,
                    analysis=await analyse_file(f.path, kind, f.original_name, limits=limits),
                )
            )
        design = Design(
            content_hash=digest,
            title=design_in.title,
            description=design_in.description,
            licence=licence,
            authors=design_in.authors,
            source_url=design_in.source_url,
            version=design_in.version,
            derivative_of=design_in.derivative_of,
            tags=design_in.tags,
            okh=okh_record,
            created_by_id=owner.id if owner else None,
            visibility=Visibility(visibility).value,
            files=records,
            provenance=list(provenance),
        )
        design.search_text = _search_text(design)
        session.add(design)
        try:
            await session.flush()
        except IntegrityError:
            raise ConflictError(
                "the same design was added at the same moment; fetch it by its content hash"
            ) from None
        kept = True
        return design, True
    finally:
        if not kept:
            await asyncio.to_thread(discard, files)


async def import_okh(
    *, session: AsyncSession, owner: User | None, uploads: Sequence[StoredFile], settings: Settings
) -> tuple[Design, bool]:
    """Import a design from an OKH manifest with its files, or from a zip holding both."""
    files: list[StoredFile] = []
    try:
        if len(uploads) == 1 and uploads[0].original_name.lower().endswith(".zip"):
            limits = okh.ZipLimits(
                max_total_bytes=settings.max_upload_bytes, max_file_bytes=settings.max_upload_bytes
            )
            manifest, files = await asyncio.to_thread(
                okh.read_zip, uploads[0].path, settings.upload_dir, limits
            )
        else:
            manifest, files = await _manifest_and_files(uploads)
        design_in = build_create(
            title=manifest.title,
            description=manifest.description,
            licence=manifest.licence,
            authors=manifest.authors,
            source_url=manifest.source_url,
            version=manifest.version,
            tags=manifest.tags,
        )
        record = {
            "format": manifest.format,
            "documentation_licence": manifest.documentation_licence,
            "files": manifest.files,
            "manifest": manifest.raw,
        }
    except BaseException:
        await asyncio.to_thread(discard, files)
        raise
    finally:
        # The archive and any upload the manifest did not name are not kept.
        await asyncio.to_thread(discard, [u for u in uploads if u not in files])
    return await create(
        session=session,
        owner=owner,
        design_in=design_in,
        files=files,
        okh_record=record,
        limits=mesh_limits(settings),
    )


async def _manifest_and_files(
    uploads: Sequence[StoredFile],
) -> tuple[okh.Manifest, list[StoredFile]]:
    manifests = [u for u in uploads if okh.is_manifest_name(u.original_name)]
    if len(manifests) != 1:
        raise InvalidInputError(
            "upload one OKH manifest (okh.yml or okh.toml) with its files, or one zip holding both"
            if not manifests
            else "upload only one OKH manifest"
        )
    data = await asyncio.to_thread(manifests[0].path.read_bytes)
    manifest = await asyncio.to_thread(okh.parse_manifest, data, manifests[0].original_name)
    by_name = {u.original_name: u for u in uploads if u is not manifests[0]}
    if not manifest.files:
        return manifest, list(by_name.values())
    chosen: list[StoredFile] = []
    for ref in manifest.files:
        clean = okh.resolve_reference("", ref)
        name = Path(clean).name
        if Path(name).suffix.lower() not in KINDS:
            continue  # documentation, images: not design files
        if name not in by_name:
            raise InvalidInputError(
                f"the manifest names {ref!r}; upload it with the manifest", file=ref
            )
        if by_name[name] not in chosen:
            chosen.append(by_name[name])
    return manifest, chosen


# -- parameters ----------------------------------------------------------------------------


def parametric_file(design: Design, file_id: int | None = None) -> DesignFile | None:
    """Return the design's OpenSCAD file (the given one, or the first), if it has one."""
    if file_id is not None:
        return get_file_or_raise(design, file_id)
    return next((f for f in design.files if f.kind == "scad"), None)


async def parameter_schema(
    *, settings: Settings, design_file: DesignFile
) -> list[customizer.Parameter]:
    """Return the Customizer parameters of an OpenSCAD design file ([] for other kinds)."""
    if design_file.kind != "scad":
        return []
    text = await asyncio.to_thread(file_path(settings, design_file).read_text, encoding="utf-8")
    return await asyncio.to_thread(customizer.parse_customizer, text)


async def check_parameters(
    *,
    settings: Settings,
    design: Design,
    design_file: DesignFile,
    parameters: Mapping[str, Any],
) -> tuple[dict[str, Any], list[str]]:
    """Check parameter values; return every parameter's value and the names that changed.

    Refuses (409) any change on a no-derivatives (ND) licence, and (422) unknown names and
    values outside the declared ranges or lists, naming the parameter and what is allowed.
    """
    if design_file.kind != "scad":
        if parameters:
            raise InvalidInputError(
                f"{design_file.name} is a {design_file.kind} file: it has no parameters"
            )
        return {}, []
    schema = await parameter_schema(settings=settings, design_file=design_file)
    if licence_flags(design.licence)["nd"]:
        by_name = {p.name: p for p in schema}
        changed = [
            name
            for name, value in parameters.items()
            if name not in by_name or _differs(by_name[name], value)
        ]
        if changed:
            raise ConflictError(
                f"{design.title!r} is licensed {design.licence}, a no-derivatives (ND) licence: "
                f"its parameters cannot be changed (asked to change {', '.join(changed)}); "
                "make it as published, or ask its authors for permission",
                licence=design.licence,
                parameters=changed,
            )
    values = customizer.validate_values(schema, parameters)
    return values, customizer.changed_names(schema, values)


async def resolve_parameters(
    *,
    settings: Settings,
    design: Design,
    design_file: DesignFile,
    parameters: Mapping[str, Any],
) -> dict[str, Any]:
    """Check parameter values for a design file and return every parameter's value.

    Refuses (409) any change on a no-derivatives (ND) licence, and (422) unknown names and
    values outside the declared ranges or lists, naming the parameter and what is allowed.
    """
    values, _changed = await check_parameters(
        settings=settings, design=design, design_file=design_file, parameters=parameters
    )
    return values


def _differs(param: customizer.Parameter, value: Any) -> bool:
    """Tell whether a (form) value differs from the parameter's default."""
    try:
        checked = customizer.validate_values([param], {param.name: value})[param.name]
    except InvalidInputError:
        return True  # not even a valid value: certainly not the published one
    return bool(customizer.changed_names([param], {param.name: checked}))
