"""The materials inventory: operators keep it, members read it."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from microfactory.errors import InvalidInputError, NotFoundError
from microfactory.machines.models import Machine
from microfactory.materials.models import MaterialStock
from microfactory.materials.schemas import MaterialCreate, MaterialRead, MaterialUpdate


async def _check_machine(session: AsyncSession, machine_id: int | None) -> None:
    if machine_id is not None and await session.get(Machine, machine_id) is None:
        raise InvalidInputError(f"there is no machine {machine_id} to load this material on")


async def list_stocks(*, session: AsyncSession) -> list[MaterialStock]:
    """Return every stock, by material and colour."""
    result = await session.execute(
        select(MaterialStock).order_by(
            MaterialStock.material, MaterialStock.colour, MaterialStock.id
        )
    )
    return list(result.scalars())


async def get_or_raise(*, session: AsyncSession, stock_id: int) -> MaterialStock:
    """Return a stock, or raise NotFoundError."""
    stock = await session.get(MaterialStock, stock_id)
    if stock is None:
        raise NotFoundError(f"there is no material stock {stock_id}")
    return stock


async def create(*, session: AsyncSession, stock_in: MaterialCreate) -> MaterialStock:
    """Add a stock of material."""
    await _check_machine(session, stock_in.machine_id)
    stock = MaterialStock(**stock_in.model_dump())
    session.add(stock)
    await session.flush()
    return stock


async def update(
    *, session: AsyncSession, stock: MaterialStock, stock_in: MaterialUpdate
) -> MaterialStock:
    """Change a stock; `machine_id: null` unloads it."""
    changes = stock_in.model_dump(exclude_unset=True)
    if "machine_id" in changes:
        await _check_machine(session, changes["machine_id"])
    for key, value in changes.items():
        setattr(stock, key, value)
    await session.flush()
    return stock


async def delete(*, session: AsyncSession, stock: MaterialStock) -> None:
    """Remove a stock (used up or gone)."""
    await session.delete(stock)
    await session.flush()


async def machine_names(*, session: AsyncSession) -> dict[int, str]:
    """Return every machine's name by id."""
    rows = await session.execute(select(Machine.id, Machine.name))
    return {int(i): str(n) for i, n in rows.all()}


def to_read(stock: MaterialStock, names: dict[int, str]) -> MaterialRead:
    """Return a stock as the API shows it, with its machine's name."""
    read = MaterialRead.model_validate(stock)
    read.machine_name = names.get(stock.machine_id) if stock.machine_id else None
    return read
