"""Job pages that start from another area: making a job from a design of the library."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from microfactory.deps import SessionDep
from microfactory.designs import pages as design_pages
from microfactory.designs import service as design_service
from microfactory.errors import DomainError, InvalidInputError
from microfactory.jobs import preparation
from microfactory.machines.models import MachineKind
from microfactory.types import Id
from microfactory.web import CsrfChecked, WebMember, redirect, render

router = APIRouter(include_in_schema=False)


@router.post("/designs/{design_id}/make", response_class=HTMLResponse)
async def design_make(
    request: Request, design_id: Id, session: SessionDep, user: WebMember, _csrf: CsrfChecked
) -> Response:
    """Make a job from a design with the form's parameters, material, copies and machine."""
    settings = request.app.state.settings
    design = await design_service.get_visible_or_raise(
        session=session, design_id=design_id, user=user
    )
    form = await request.form()
    raw = design_pages.form_parameters(form)
    try:
        file_field = str(form.get("file_id") or "")
        if not file_field.isdigit():
            raise InvalidInputError("choose which file of the design to make")
        design_file = design_service.get_file_or_raise(design, int(file_field))
        copies_field = str(form.get("copies") or "1")
        if not copies_field.isdigit():
            raise InvalidInputError("copies must be a whole number")
        target = str(form.get("target") or "")
        machine_id: int | None = None
        machine_kind: MachineKind | None = None
        if target.startswith("machine:") and target[8:].isdigit():
            machine_id = int(target[8:])
        elif target.startswith("kind:") and target[5:] in {k.value for k in MachineKind}:
            machine_kind = MachineKind(target[5:])
        parameters: dict[str, Any] = {}
        if design_file.kind == "scad":
            values, changed = await design_service.check_parameters(
                settings=settings, design=design, design_file=design_file, parameters=raw
            )
            # The job records only what differs from the published design.
            parameters = {name: values[name] for name in changed}
        job = await preparation.create_from_design(
            session=session,
            owner=user,
            design=design,
            design_file=design_file,
            parameters=parameters,
            material=str(form.get("material") or "").strip() or None,
            copies=int(copies_field),
            machine_kind=machine_kind,
            machine_id=machine_id,
            settings=settings,
        )
    except DomainError as exc:
        context = await design_pages.design_context(request, session, design, user)
        context.update({"error": exc.detail, "values": raw})
        return render(request, "design.html", context, status_code=exc.status_code)
    await session.commit()  # the job exists before its G-code is made
    request.app.state.preparer.submit(job.id)
    return redirect(f"/jobs/{job.id}")
