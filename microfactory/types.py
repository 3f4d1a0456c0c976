"""Validated types shared by every request schema and route: ids, numbers, times.

Each one turns an input that used to reach the database or the date arithmetic and fail there
(a 500) into a 422 that names the field and the rule:

- `Id`: database ids are signed 64-bit; 2**63 made SQLite raise OverflowError.
- `Number` and friends: finite only. `Infinity` was stored, then broke every page that
  showed it; JSON has no such number.
- `Timestamp`, `Day`: ISO 8601 text only (pydantic would read `0.5` as a Unix time), with a
  year in [`MIN_YEAR`, `MAX_YEAR`] so that adding days or converting zones cannot overflow
  (year 1 or 9999 did).
- No integer or number in a JSON body takes `true`/`false` (pydantic reads them as 1 and 0):
  body fields are strict (`Int`, `Number`, `BodyId`); path and query values arrive as text.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Final

from annotated_types import Interval
from pydantic import (
    AfterValidator,
    AllowInfNan,
    AwareDatetime,
    BeforeValidator,
    Strict,
    WithJsonSchema,
)

ID_MAX: Final = 2**63 - 1  # SQLite INTEGER and PostgreSQL BIGINT
MIN_YEAR: Final = 1970
MAX_YEAR: Final = 2999

MONTH_PATTERN: Final = r"^(19[7-9]\d|2\d{3})-(0[1-9]|1[0-2])$"  # YYYY-MM in the years above
_NUMERIC_TEXT: Final = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*\Z")


def _iso_text(value: Any) -> Any:
    """Refuse numbers (and numeric strings) where a date or time is expected."""
    if isinstance(value, bool | int | float) or (
        isinstance(value, str) and _NUMERIC_TEXT.match(value)
    ):
        raise ValueError("must be an ISO 8601 date or time, such as 2026-11-30T09:00:00Z")
    return value


def _year_in_range(value: dt.date) -> dt.date:
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise ValueError(f"year must be between {MIN_YEAR} and {MAX_YEAR}, not {value.year}")
    return value


Id = Annotated[int, Interval(ge=1, le=ID_MAX)]
"""A database id: a whole number from 1 to 2**63 - 1 (path, query or body)."""

BodyId = Annotated[int, Strict(), Interval(ge=1, le=ID_MAX)]
"""An id in a JSON body, where `true` is not 1."""

Int = Annotated[int, Strict()]
"""A whole number in a JSON body: true/false are refused; bound it with Field(ge=, le=)."""

Bool = Annotated[bool, Strict()]
"""true or false in a JSON body (not 0, 1 or "yes")."""

Number = Annotated[float, Strict(), AllowInfNan(False)]
"""A finite number in a JSON body: Infinity, NaN and true/false are refused."""

Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_iso_text),
    AfterValidator(_year_in_range),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""A moment with its time zone, between the years MIN_YEAR and MAX_YEAR."""

Day = Annotated[
    dt.date,
    BeforeValidator(_iso_text),
    AfterValidator(_year_in_range),
    WithJsonSchema({"type": "string", "format": "date"}),
]
"""A calendar day (YYYY-MM-DD) between the years MIN_YEAR and MAX_YEAR."""


__all__ = [
    "ID_MAX",
    "MAX_YEAR",
    "MIN_YEAR",
    "MONTH_PATTERN",
    "BodyId",
    "Day",
    "Id",
    "Int",
    "Number",
    "Timestamp",
]
