"""Design library endpoints: browse, search, add, import from OKH, files and parameters.

Members read and add designs; importing OKH manifests and archives is for operators, since an
import can bring in many files from outside at once.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status
from fastapi.responses import FileResponse

from microfactory import retention
from microfactory.deps import AnyUser, SessionDep, SettingsDep, StaffUser
from microfactory.designs import service
from microfactory.designs.schemas import (
    DesignRead,
    ParameterCheck,
    ParameterSchema,
    ParameterValues,
    build_create,
)
from microfactory.designs.storage import store_uploads
from microfactory.errors import NotFoundError
from microfactory.types import ID_MAX, Id

router = APIRouter(prefix="/api/v1/designs", tags=["designs"])


@router.get("", response_model=list[DesignRead])
async def list_designs(
    session: SessionDep,
    _user: AnyUser,
    q: Annotated[str | None, Query(max_length=200)] = None,
    content_hash: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=ID_MAX)] = 0,
) -> list[DesignRead]:
    """List designs, newest first; `q` searches title, description, authors, licence, tags."""
    if content_hash:
        found = await service.get_by_hash(session=session, content_hash=content_hash)
        return [service.to_read(found)] if found else []
    designs = await service.list_designs(session=session, q=q, limit=limit, offset=offset)
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
    )
    if not created:
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


@router.get("/{design_id:int}", response_model=DesignRead)
async def get_design(design_id: Id, session: SessionDep, _user: AnyUser) -> DesignRead:
    """Return one design with its files, licence flags and attribution."""
    return service.to_read(await service.get_or_raise(session=session, design_id=design_id))


@router.get("/{design_id:int}/files/{file_id:int}", response_class=FileResponse)
async def download_file(
    design_id: Id, file_id: Id, session: SessionDep, settings: SettingsDep, _user: AnyUser
) -> FileResponse:
    """Download one file of a design under its original name."""
    design = await service.get_or_raise(session=session, design_id=design_id)
    design_file = service.get_file_or_raise(design, file_id)
    path = service.file_path(settings, design_file)
    if not path.is_file():
        raise NotFoundError(f"the stored copy of {design_file.name} is missing")
    return FileResponse(path, filename=design_file.name, media_type="application/octet-stream")


@router.get("/{design_id:int}/parameters", response_model=ParameterSchema)
async def get_parameters(
    design_id: Id,
    session: SessionDep,
    settings: SettingsDep,
    _user: AnyUser,
    file_id: Id | None = None,
) -> ParameterSchema:
    """Return the Customizer parameters of the design's OpenSCAD file, for a form."""
    design = await service.get_or_raise(session=session, design_id=design_id)
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
    _user: AnyUser,
) -> ParameterValues:
    """Check parameter values: 422 outside the declared ranges, 409 on an ND licence."""
    design = await service.get_or_raise(session=session, design_id=design_id)
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
