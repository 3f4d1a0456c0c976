"""Materials inventory endpoints: members read, operators and admins write."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from microfactory.deps import AnyUser, SessionDep, StaffUser
from microfactory.materials import service
from microfactory.materials.schemas import MaterialCreate, MaterialRead, MaterialUpdate
from microfactory.types import Id

router = APIRouter(prefix="/api/v1/materials", tags=["materials"])


@router.get("", response_model=list[MaterialRead])
async def list_materials(session: SessionDep, user: AnyUser) -> list[MaterialRead]:
    """List the materials on hand, and where each is loaded."""
    names = await service.machine_names(session=session)
    return [service.to_read(s, names) for s in await service.list_stocks(session=session)]


@router.post("", response_model=MaterialRead, status_code=status.HTTP_201_CREATED)
async def create_material(
    body: MaterialCreate, session: SessionDep, user: StaffUser
) -> MaterialRead:
    """Add a stock of material (operators)."""
    stock = await service.create(session=session, stock_in=body)
    return service.to_read(stock, await service.machine_names(session=session))


@router.get("/{stock_id}", response_model=MaterialRead)
async def get_material(stock_id: Id, session: SessionDep, user: AnyUser) -> MaterialRead:
    """Show one stock of material."""
    stock = await service.get_or_raise(session=session, stock_id=stock_id)
    return service.to_read(stock, await service.machine_names(session=session))


@router.patch("/{stock_id}", response_model=MaterialRead)
async def update_material(
    stock_id: Id, body: MaterialUpdate, session: SessionDep, user: StaffUser
) -> MaterialRead:
    """Change a stock: amount left, colour, the machine it is loaded on (operators)."""
    stock = await service.get_or_raise(session=session, stock_id=stock_id)
    stock = await service.update(session=session, stock=stock, stock_in=body)
    return service.to_read(stock, await service.machine_names(session=session))


@router.delete("/{stock_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_material(stock_id: Id, session: SessionDep, user: StaffUser) -> Response:
    """Remove a stock of material (operators)."""
    stock = await service.get_or_raise(session=session, stock_id=stock_id)
    await service.delete(session=session, stock=stock)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
