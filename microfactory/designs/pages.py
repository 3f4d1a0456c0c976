"""Dashboard pages of the design library: browse, search, view, add, import.

Members browse and add designs; operators also import OKH manifests. Making a job from a
design is a job page (jobs/pages.py): jobs depend on designs, not the other way round.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, Response

from microfactory import retention
from microfactory.deps import SessionDep, check_csrf
from microfactory.designs import service
from microfactory.designs.licences import licence_flags
from microfactory.designs.models import Design, Visibility
from microfactory.designs.schemas import build_create
from microfactory.designs.storage import store_uploads
from microfactory.errors import ConflictError, DomainError, InvalidInputError
from microfactory.fabrication.prusaslicer import MATERIALS
from microfactory.machines import service as machine_service
from microfactory.machines.models import MachineKind
from microfactory.types import Id
from microfactory.web import (
    WebMember,
    WebStaff,
    redirect,
    render,
)

router = APIRouter(include_in_schema=False)

PARAM_PREFIX = "p."


@router.get("/designs", response_class=HTMLResponse)
async def designs_page(
    request: Request, session: SessionDep, user: WebMember, q: str = ""
) -> HTMLResponse:
    """Browse and search the design library."""
    designs = await service.list_designs(session=session, user=user, q=q[:200] or None)
    return render(
        request,
        "designs.html",
        {
            "designs": designs,
            "q": q[:200],
            "flags": {d.id: licence_flags(d.licence) for d in designs},
            "staff": user.is_staff,
        },
    )


def _new_context(error: str | None = None, form: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": error, "form": form or {}}


@router.get("/designs/new", response_class=HTMLResponse)
async def design_new_page(request: Request, user: WebMember) -> HTMLResponse:
    """Show the form to add a design."""
    return render(request, "design_new.html", _new_context())


@router.post("/designs/new", response_class=HTMLResponse)
async def design_new_submit(
    request: Request,
    session: SessionDep,
    user: WebMember,
    files: Annotated[list[UploadFile], File()],
    csrf_token: Annotated[str, Form()] = "",
    title: Annotated[str, Form(max_length=200)] = "",
    licence: Annotated[str, Form(max_length=200)] = "",
    description: Annotated[str, Form(max_length=20000)] = "",
    authors: Annotated[str, Form(max_length=2000)] = "",
    source_url: Annotated[str, Form(max_length=500)] = "",
    version: Annotated[str, Form(max_length=64)] = "",
    tags: Annotated[str, Form(max_length=2000)] = "",
    visibility: Annotated[str, Form(max_length=16)] = Visibility.SHOP.value,
) -> Response:
    """Add a design from the dashboard; the same files lead to the existing design."""
    check_csrf(request, csrf_token)
    settings = request.app.state.settings
    form = {
        "title": title,
        "licence": licence,
        "description": description,
        "authors": authors,
        "source_url": source_url,
        "version": version,
        "tags": tags,
        "visibility": visibility,
    }
    try:
        if visibility not in {v.value for v in Visibility}:
            raise InvalidInputError("choose who sees the design: public, shop or private")
        design_in = build_create(
            title=title,
            licence=licence,
            description=description,
            authors=[a for a in authors.splitlines() if a.strip()],
            source_url=source_url or None,
            version=version or None,
            tags=[tags],
        )
        stored = await store_uploads(
            [f for f in files if f.filename], settings.upload_dir, settings.max_upload_bytes
        )
        await retention.check_quota_or_discard(
            session=session,
            settings=settings,
            user=user,
            stored=[(f.path, f.size) for f in stored],
        )
        design, _created = await service.create(
            session=session,
            owner=user,
            design_in=design_in,
            files=stored,
            limits=service.mesh_limits(settings),
            visibility=Visibility(visibility),
        )
        if not service.can_see(design, user):
            raise ConflictError("these files are already a design held here privately")
    except DomainError as exc:
        return render(
            request, "design_new.html", _new_context(exc.detail, form), status_code=exc.status_code
        )
    return redirect(f"/designs/{design.id}")


@router.get("/designs/import", response_class=HTMLResponse)
async def design_import_page(request: Request, user: WebStaff) -> HTMLResponse:
    """Show the OKH import form (operators)."""
    return render(request, "design_import.html", {"error": None})


@router.post("/designs/import", response_class=HTMLResponse)
async def design_import_submit(
    request: Request,
    session: SessionDep,
    user: WebStaff,
    files: Annotated[list[UploadFile], File()],
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    """Import a design from an OKH manifest with its files, or a zip (operators)."""
    check_csrf(request, csrf_token)
    settings = request.app.state.settings
    try:
        stored = await store_uploads(
            [f for f in files if f.filename],
            settings.upload_dir,
            settings.max_upload_bytes,
            allow_zip=True,
        )
        design, _created = await service.import_okh(
            session=session, owner=user, uploads=stored, settings=settings
        )
    except DomainError as exc:
        return render(
            request, "design_import.html", {"error": exc.detail}, status_code=exc.status_code
        )
    return redirect(f"/designs/{design.id}")


async def design_context(
    request: Request, session: SessionDep, design: Design, user: Any
) -> dict[str, Any]:
    settings = request.app.state.settings
    scad = service.parametric_file(design)
    params = await service.parameter_schema(settings=settings, design_file=scad) if scad else []
    groups: dict[str, list[Any]] = {}
    for p in params:
        groups.setdefault(p.group, []).append(p)
    machines = [
        m
        for m in await machine_service.list_machines(session=session)
        if m.driver != "manual" and m.enabled
    ]
    return {
        "design": design,
        "read": service.to_read(design),
        "flags": licence_flags(design.licence),
        "scad": scad,
        "groups": groups,
        "machines": machines,
        "kinds": list(MachineKind),
        "materials": list(MATERIALS),
        "staff": user.is_staff,
        "can_edit_visibility": service.can_edit_visibility(design, user),
        "visibilities": list(Visibility),
        "publishing": settings.network_publish,
        "error": None,
        "values": {},
    }


@router.get("/designs/{design_id}", response_class=HTMLResponse)
async def design_page(
    request: Request, design_id: Id, session: SessionDep, user: WebMember
) -> HTMLResponse:
    """Show a design: licence and attribution, files with analysis, parameters, make."""
    design = await service.get_visible_or_raise(session=session, design_id=design_id, user=user)
    return render(request, "design.html", await design_context(request, session, design, user))


@router.post("/designs/{design_id}/visibility", response_class=HTMLResponse)
async def design_visibility_submit(
    request: Request,
    design_id: Id,
    session: SessionDep,
    user: WebMember,
    visibility: Annotated[str, Form(max_length=16)] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    """Change who may see a design (its author and admins)."""
    check_csrf(request, csrf_token)
    design = await service.get_visible_or_raise(session=session, design_id=design_id, user=user)
    try:
        if visibility not in {v.value for v in Visibility}:
            raise InvalidInputError("choose public, shop or private")
        await service.set_visibility(
            session=session, design=design, user=user, visibility=Visibility(visibility)
        )
    except DomainError as exc:
        context = await design_context(request, session, design, user)
        context["error"] = exc.detail
        return render(request, "design.html", context, status_code=exc.status_code)
    return redirect(f"/designs/{design.id}")


def form_parameters(form: Any) -> dict[str, str]:
    values: dict[str, str] = {}
    for key in form:
        if key.startswith(PARAM_PREFIX):
            # A checkbox posts a hidden "false" and, when ticked, "true": the last one wins.
            entries = [v for v in form.getlist(key) if isinstance(v, str)]
            if entries:
                values[key[len(PARAM_PREFIX) :]] = entries[-1]
    return values
