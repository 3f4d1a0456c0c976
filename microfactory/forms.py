"""Dashboard forms: read typed fields, and say what is wrong with them in plain words.

A refused form comes back with what was typed and a message next to each refused field:
"Hours per week: write a number, such as 10" rather than Pydantic's "could not convert string
to float: 'abc'" or a regular expression.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from typing import Any

from microfactory.errors import InvalidInputError

# The words people see for field names; anything else is its name with spaces.
LABELS = {
    "machine_id": "Machine",
    "user_id": "Member",
    "first_day": "First day",
    "last_day": "Last day",
    "expires": "Valid until",
    "expires_at": "Valid until",
    "hours_per_week": "Hours per week",
    "start": "From",
    "end": "To",
    "kind": "Machine kind",
    "scope": "For",
    "reason": "Reason",
    "note": "Note",
    "minutes": "Length",
    # The opening hours form: one field per weekday, 0 = Monday.
    **{
        f"day{i}": day
        for i, day in enumerate(
            ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
        )
    },
}


class FieldError(InvalidInputError):
    """One form field was refused; `field` names it so the page can show the message there."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{label(field)}: {message}", field=field, field_message=message)


def label(field: str) -> str:
    """Return the words a person sees for a field."""
    return LABELS.get(field, field.replace("_", " ").capitalize())


def _plain(error: Mapping[str, Any]) -> str:
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    if kind in ("missing", "value_error.missing"):
        return "fill this in"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "write a whole number, such as 3"
    if kind in ("float_parsing", "float_type", "finite_number"):
        return "write a number, such as 2.5"
    if kind in ("date_parsing", "date_from_datetime_parsing", "date_type"):
        return "write a date, such as 2027-06-30"
    if kind.startswith("datetime"):
        return "write a date and a time, such as 2027-06-30 14:00"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        words = {
            "greater_than": ("more than", "gt"),
            "greater_than_equal": ("at least", "ge"),
            "less_than": ("less than", "lt"),
            "less_than_equal": ("at most", "le"),
        }[kind]
        return f"must be {words[0]} {ctx.get(words[1])}"
    if kind == "string_too_long":
        return f"write at most {ctx.get('max_length')} characters"
    if kind == "string_too_short":
        return "fill this in" if ctx.get("min_length") == 1 else "this is too short"
    if kind == "string_pattern_mismatch":
        return "this is not in the expected form"
    if kind == "enum":
        return f"choose one of: {ctx.get('expected')}"
    message = str(error.get("msg", "is not valid"))
    return message.removeprefix("Value error, ")


def _field_of(loc: Iterable[Any]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "form")]
    return parts[-1] if parts else None


def plain_errors(
    errors: Iterable[Mapping[str, Any]], rename: Mapping[str, str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """Return ({form field: message}, [messages about the whole form]) in plain words.

    `rename` maps a model's field names to the form's (`expires_at` is typed as `expires`).
    """
    fields: dict[str, str] = {}
    general: list[str] = []
    for error in errors:
        name = _field_of(error.get("loc", ()))
        if name is not None and not name.isdigit():
            name = (rename or {}).get(name, name)
            fields.setdefault(name, _plain(error))
        else:
            general.append(_plain(error))
    return fields, general


def summary(fields: Mapping[str, str], general: Iterable[str]) -> str:
    """One line for the top of the page: every refused field and why."""
    return "; ".join([*(f"{label(k)}: {v}" for k, v in fields.items()), *general])


def whole_number(value: str, field: str, *, minimum: int = 1) -> int:
    """Read a whole number typed into a form field."""
    text = value.strip()
    if not text:
        raise FieldError(field, "fill this in")
    if not text.isdigit() or len(text) > 18:
        raise FieldError(field, "write a whole number, such as 3")
    number = int(text)
    if number < minimum:
        raise FieldError(field, f"must be at least {minimum}")
    return number


def number(value: str, field: str) -> float | None:
    """Read a decimal number typed into a form field; empty means none."""
    text = value.strip().replace(",", ".")
    if not text:
        return None
    try:
        parsed = float(text)
    except ValueError:
        raise FieldError(field, "write a number, such as 2.5") from None
    if not math.isfinite(parsed):
        raise FieldError(field, "write a number, such as 2.5")
    return parsed


def date(value: str, field: str, *, required: bool = True) -> dt.date | None:
    """Read a date (YYYY-MM-DD, as date inputs send it) typed into a form field."""
    text = value.strip()
    if not text:
        if required:
            raise FieldError(field, "fill this in")
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise FieldError(field, "write a date, such as 2027-06-30") from None
