"""Design library endpoints: browse, search, add, import from OKH or another shop, files.

Members read and add designs they may see (a design's visibility: public, shop, private);
importing OKH manifests and archives, and designs from other shops, is for operators, since
an import brings files in from outside. The by-hash endpoints are how other shops fetch a
design: anonymous when network publishing is on and the design is public.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    Path,
    Query,
    Request,
    Response,
    UploadFile,
    status,
)
from fastapi.responses import FileResponse

from microfactory import retention
from microfactory.accounts.models import Role, User
from microfactory.config import Settings
from microfactory.deps import (
    SESSION_COOKIE,
    AnyUser,
    SessionDep,
    SettingsDep,
    StaffUser,
    current_user,
    oauth2_scheme,
)
from microfactory.designs import remote, service
from microfactory.designs.models import Design, DesignFile, Visibility
from microfactory.designs.schemas import (
    DesignMetadata,
    DesignRead,
    ParameterCheck,
    ParameterSchema,
    ParameterValues,
    RemoteImport,
    VisibilityUpdate,
    build_create,
)
from microfactory.designs.storage import store_uploads
from microfactory.errors import (
    ConflictError,
    InvalidInputError,
    NotAuthenticatedError,
    NotFoundError,
)
from microfactory.types import ID_MAX, Id

router = APIRouter(prefix="/api/v1/designs", tags=["designs"])

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# What a design file is served as. Every file is an attachment with `nosniff`, so an SVG from
# another shop is never rendered as a page of this one.
MEDIA_TYPES = {
    "stl": "model/stl",
    "3mf": "model/3mf",
    "scad": "text/plain; charset=utf-8",
    "gcode": "text/x.gcode",
    "svg": "image/svg+xml",
    "dxf": "image/vnd.dxf",
}


async def optional_user(
    request: Request,
    session: SessionDep,
    bearer: Annotated[str | None, Depends(oauth2_scheme)],
) -> User | None:
    """Return the caller, or None for a request with no credentials (bad ones are a 401)."""
    if not bearer and not request.cookies.get(SESSION_COOKIE):
        return None
    return await current_user(request, session, bearer)


# Declared for the route audit: any role, and anonymous callers only for public designs while
# network publishing is on (service.can_see decides per design).
optional_user.allowed_roles = frozenset(Role)  # type: ignore[attr-defined]
MaybeUser = Annotated[User | None, Depends(optional_user)]


def _sha256(value: str, what: str) -> str:
    if not _SHA256.match(value):
        raise InvalidInputError(
            f"{what} must be a SHA-256 in 64 lower-case hex characters, not {value[:80]!r}"
        )
    return value


HashPath = Annotated[str, Path(max_length=200, description="64 lower-case hex characters")]


@router.get("", response_model=list[DesignRead])
async def list_designs(
    session: SessionDep,
    user: AnyUser,
    q: Annotated[str | None, Query(max_length=200)] = None,
    content_hash: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=ID_MAX)] = 0,
) -> list[DesignRead]:
    """List the designs you may see, newest first; `q` searches title, description, authors,
    licence, tags."""
    if content_hash:
        found = await service.get_by_hash(session=session, content_hash=content_hash)
        return [service.to_read(found)] if found and service.can_see(found, user) else []
    designs = await service.list_designs(
        session=session, user=user, q=q, limit=limit, offset=offset
    )
    return [service.to_read(d) for d in designs]


@router.post("", response_model=DesignRead, status_code=status.HTTP_201_CREATED)
async def create_design(
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    user: AnyUser,
    files: Annotated[list[UploadFile], File(description="STL, 3MF, .scad, G-code, SVG, DXF")],
    title: Annotated[str, Form(max_length=200)],
    licence: Annotated[str, Form(max_length=200, description="an SPDX licence expression")],
    description: Annotated[str, Form(max_length=20000)] = "",
    authors: Annotated[list[str] | None, Form(description="repeat the field per author")] = None,
    source_url: Annotated[str | None, Form(max_length=500)] = None,
    version: Annotated[str | None, Form(max_length=64)] = None,
    derivative_of: Annotated[str | None, Form(max_length=64)] = None,
    tags: Annotated[list[str] | None, Form(description="repeat, or separate with commas")] = None,
    visibility: Annotated[Visibility, Form()] = Visibility.SHOP,
) -> DesignRead:
    """Add a design; the same files again return the existing design (200, not 201)."""
    design_in = build_create(
        title=title,
        licence=licence,
        description=description,
        authors=authors or [],
        source_url=source_url,
        version=version,
        derivative_of=derivative_of,
        tags=tags or [],
    )
    stored = await store_uploads(files, settings.upload_dir, settings.max_upload_bytes)
    await retention.check_quota_or_discard(
        session=session, settings=settings, user=user, stored=[(f.path, f.size) for f in stored]
    )
    design, created = await service.create(
        session=session,
        owner=user,
        design_in=design_in,
        files=stored,
        limits=service.mesh_limits(settings),
        visibility=visibility,
    )
    if not created:
        if not service.can_see(design, user):
            raise ConflictError(
                "these files are already a design held here privately by its author"
            )
        response.status_code = status.HTTP_200_OK
    return service.to_read(design)


@router.post("/import", response_model=DesignRead, status_code=status.HTTP_201_CREATED)
async def import_okh(
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    user: StaffUser,
    files: Annotated[
        list[UploadFile], File(description="okh.yml or okh.toml with its files, or one .zip")
    ],
) -> DesignRead:
    """Import a design from an Open Know-How manifest (operators)."""
    stored = await store_uploads(
        files, settings.upload_dir, settings.max_upload_bytes, allow_zip=True
    )
    design, created = await service.import_okh(
        session=session, owner=user, uploads=stored, settings=settings
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return service.to_read(design)


@router.post("/import-remote", response_model=DesignRead, status_code=status.HTTP_201_CREATED)
async def import_remote(
    body: RemoteImport,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    user: StaffUser,
) -> DesignRead:
    """Fetch a design from another shop by content hash, verify every file, keep (operators).

    A design already held under the hash is answered as it is (200, not 201).
    """
    if body.shop is not None:
        assert body.hash is not None  # checked by RemoteImport
        source = await remote.source_from_hub(
            settings=settings, shop_id=body.shop, content_hash=body.hash
        )
    else:
        assert body.url is not None
        source = remote.source_from_url(body.url, body.hash)
    held = await remote.held_design(session=session, user=user, source=source)
    if held is not None:
        response.status_code = status.HTTP_200_OK
        return service.to_read(held)
    # End the transaction before fetching, which may take minutes: no lock or connection is
    # held meanwhile (the token check may have written). The keep is a second transaction.
    await session.commit()
    fetched = await remote.fetch_design(settings=settings, source=source)
    design, created = await remote.keep_design(
        session=session, settings=settings, user=user, fetched=fetched
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return service.to_read(design)


@router.get("/by-hash/{sha256}", response_model=DesignMetadata)
async def design_by_hash(
    sha256: HashPath, session: SessionDep, settings: SettingsDep, user: MaybeUser
) -> DesignMetadata:
    """Return a design's metadata by content hash: licence, authors, provenance, files.

    Anonymous when network publishing is on and the design is public; a design the caller
    may not see is answered 404, like one this shop does not hold.
    """
    design = await _by_hash(session, settings, user, sha256)
    parent = await service.derivative_hash(session=session, design=design)
    return remote.metadata(design, derivative_of=parent)


@router.get("/by-hash/{sha256}/files/{file_sha256}", response_class=FileResponse)
async def design_file_by_hash(
    sha256: HashPath,
    file_sha256: HashPath,
    session: SessionDep,
    settings: SettingsDep,
    user: MaybeUser,
) -> FileResponse:
    """Return one file of a design, named by the design's hash and the file's SHA-256."""
    _sha256(file_sha256, "the file's hash")
    design = await _by_hash(session, settings, user, sha256)
    design_file = next((f for f in design.files if f.sha256 == file_sha256), None)
    if design_file is None:
        raise NotFoundError(f"design {sha256} has no file with SHA-256 {file_sha256}")
    return _file_response(settings, design_file)


async def _by_hash(
    session: SessionDep, settings: SettingsDep, user: User | None, sha256: str
) -> Design:
    _sha256(sha256, "a design's content hash")
    if user is None and not settings.network_publish:
        raise NotAuthenticatedError(
            "not authenticated: this shop does not publish designs to the network"
        )
    return await service.get_visible_by_hash(
        session=session, content_hash=sha256, user=user, publishing=settings.network_publish
    )


def _file_response(settings: Settings, design_file: DesignFile) -> FileResponse:
    path = service.file_path(settings, design_file)
    if not path.is_file():
        raise NotFoundError(f"the stored copy of {design_file.name} is missing")
    return FileResponse(
        path,
        filename=design_file.name,  # sent RFC 6266/5987-encoded, as an attachment
        media_type=MEDIA_TYPES.get(design_file.kind, "application/octet-stream"),
        headers={"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"},
    )


@router.get("/{design_id:int}", response_model=DesignRead)
async def get_design(design_id: Id, session: SessionDep, user: AnyUser) -> DesignRead:
    """Return one design with its files, licence flags and attribution."""
    return service.to_read(
        await service.get_visible_or_raise(session=session, design_id=design_id, user=user)
    )


@router.patch("/{design_id:int}", response_model=DesignRead)
async def update_design(
    design_id: Id, body: VisibilityUpdate, session: SessionDep, user: AnyUser
) -> DesignRead:
    """Change who may see a design: public, shop or private (its author and admins)."""
    design = await service.get_visible_or_raise(session=session, design_id=design_id, user=user)
    await service.set_visibility(
        session=session, design=design, user=user, visibility=body.visibility
    )
    return service.to_read(design)


@router.get("/{design_id:int}/files/{file_id:int}", response_class=FileResponse)
async def download_file(
    design_id: Id, file_id: Id, session: SessionDep, settings: SettingsDep, user: AnyUser
) -> FileResponse:
    """Download one file of a design under its original name."""
    design = await service.get_visible_or_raise(session=session, design_id=design_id, user=user)
    return _file_response(settings, service.get_file_or_raise(design, file_id))


@router.get("/{design_id:int}/parameters", response_model=ParameterSchema)
async def get_parameters(
    design_id: Id,
    session: SessionDep,
    settings: SettingsDep,
    user: AnyUser,
    file_id: Id | None = None,
) -> ParameterSchema:
    """Return the Customizer parameters of the design's OpenSCAD file, for a form."""
    design = await service.get_visible_or_raise(session=session, design_id=design_id, user=user)
    design_file = service.parametric_file(design, file_id)
    params = (
        await service.parameter_schema(settings=settings, design_file=design_file)
        if design_file
        else []
    )
    return ParameterSchema(
        design_id=design.id,
        file_id=design_file.id if design_file else None,
        file_name=design_file.name if design_file else None,
        nd=service.licence_flags(design.licence)["nd"],
        parameters=[p.as_dict() for p in params],
    )


@router.post("/{design_id:int}/parameters", response_model=ParameterValues)
async def check_parameters(
    design_id: Id,
    body: ParameterCheck,
    session: SessionDep,
    settings: SettingsDep,
    user: AnyUser,
) -> ParameterValues:
    """Check parameter values: 422 outside the declared ranges, 409 on an ND licence."""
    design = await service.get_visible_or_raise(session=session, design_id=design_id, user=user)
    design_file = service.parametric_file(design, body.file_id)
    if design_file is None:
        if body.parameters:
            raise NotFoundError(f"design {design_id} has no OpenSCAD file to take parameters")
        return ParameterValues(design_id=design.id, file_id=None, values={}, changed=[])
    values, changed = await service.check_parameters(
        settings=settings, design=design, design_file=design_file, parameters=body.parameters
    )
    return ParameterValues(
        design_id=design.id, file_id=design_file.id, values=values, changed=changed
    )
