"""SPDX licence expressions: validation, the ND/NC rules, and attribution for jobs.

The SPDX list comes from the `license-expression` package, which ships the SPDX licence
database; we never keep a list of our own.
"""

from __future__ import annotations

import functools
from typing import Any, TypedDict

from boolean.boolean import Expression
from license_expression import (
    AND,
    OR,
    ExpressionError,
    LicenseSymbol,
    LicenseWithExceptionSymbol,
    Licensing,
    get_license_index,
    get_spdx_licensing,
)

from microfactory.errors import InvalidInputError


class LicenceFlags(TypedDict):
    """Restrictions a licence puts on what the shop may do with a design."""

    nd: bool  # no derivatives: parameters may not be changed
    nc: bool  # non-commercial: flag jobs that carry a price


@functools.cache
def _licensing() -> Licensing:
    # Loading the SPDX database takes ~0.3 s; do it once per process.
    return get_spdx_licensing()


def normalise_licence(expression: str) -> str:
    """Return the canonical SPDX form of a licence expression; 422 naming unknown ids."""
    text = (expression or "").strip()
    if not text:
        raise InvalidInputError("a licence is required: give an SPDX id such as CC-BY-4.0")
    if len(text) > 200:
        raise InvalidInputError("the licence expression is longer than 200 characters")
    try:
        info = _licensing().validate(text)
    except Exception:  # the library raises odd types (AttributeError) on some syntax errors
        raise InvalidInputError(
            f"invalid SPDX licence expression {text!r}: it is not well formed "
            "(e.g. 'MIT', 'CC-BY-SA-4.0', 'MIT OR Apache-2.0')",
            licence=text,
        ) from None
    # LicenseRef-* ids are SPDX's way to name a licence outside the list: allowed.
    unknown = sorted(
        s for s in info.invalid_symbols if s.strip() and not s.startswith("LicenseRef-")
    )
    if unknown:
        raise InvalidInputError(
            f"unknown SPDX licence id(s): {', '.join(unknown)}; "
            "use ids from https://spdx.org/licenses/",
            licence=text,
            unknown=unknown,
        )
    if info.normalized_expression:
        return str(info.normalized_expression)
    if info.invalid_symbols and all(s.startswith("LicenseRef-") for s in info.invalid_symbols):
        return str(_licensing().parse(text).render())
    raise InvalidInputError(
        f"invalid SPDX licence expression {text!r}: it is not well formed", licence=text
    )


def _symbol_has(key: str, words: frozenset[str]) -> bool:
    # CC ids spell restrictions as dash-separated segments (CC-BY-NC-ND-4.0); PolyForm and
    # others spell them out ("Noncommercial"). "NCSA" is a segment, not NC, so it stays free.
    segments = {s.lower() for s in key.split("-")}
    return bool(segments & words)


_ND = frozenset({"nd", "noderivatives", "noderivs"})
_NC = frozenset({"nc", "noncommercial"})


def _restricted(node: Expression, words: frozenset[str]) -> bool:
    """Return whether every way of complying with the expression carries the restriction."""
    if isinstance(node, LicenseWithExceptionSymbol):
        return _symbol_has(str(node.license_symbol.key), words)
    if isinstance(node, LicenseSymbol):
        return _symbol_has(str(node.key), words)
    if isinstance(node, OR):
        # A choice: the shop may pick a licence without the restriction.
        return all(_restricted(arg, words) for arg in node.args)
    if isinstance(node, AND):
        return any(_restricted(arg, words) for arg in node.args)
    return False


@functools.lru_cache(maxsize=1024)
def licence_flags(licence: str) -> LicenceFlags:
    """Return whether a licence forbids derivatives (nd) or commercial use (nc)."""
    try:
        parsed = _licensing().parse(licence)
    except ExpressionError:
        return {"nd": False, "nc": False}
    if parsed is None:
        return {"nd": False, "nc": False}
    return {"nd": _restricted(parsed, _ND), "nc": _restricted(parsed, _NC)}


# ScanCode's licence categories (the index `license-expression` ships) of licences that grant
# no general right to pass a copy on. Every other licence on the SPDX list grants it, including
# the CC NC and ND licences (ScanCode's "Source-available"): they let a shop share a design
# verbatim (ND) or non-commercially (NC), which is what a transfer between shops is. Of the
# SPDX list, no id is in these categories today; proprietary and "all rights reserved" terms
# are spelled LicenseRef-*, which are refused on their own.
_NOT_REDISTRIBUTABLE = frozenset({"Commercial", "CLA", "Patent License"})


@functools.cache
def _categories() -> dict[str, str]:
    # The index is 2,579 entries; read once per process (~20 ms).
    categories: dict[str, str] = {}
    for entry in get_license_index():
        category = entry.get("category") or ""
        for key in [entry.get("spdx_license_key"), *(entry.get("other_spdx_license_keys") or [])]:
            if key:
                categories[str(key).lower()] = category
    return categories


def _redistribution_problem(node: Expression) -> str | None:
    """Return why an expression grants no right to redistribute, or None if it does."""
    if isinstance(node, LicenseWithExceptionSymbol):
        return _redistribution_problem(node.license_symbol)
    if isinstance(node, LicenseSymbol):
        key = str(node.key)
        if key.startswith("LicenseRef-"):
            return f"{key} is a licence outside the SPDX list, whose terms this shop cannot check"
        category = _categories().get(key.lower())
        if category is None:
            return f"{key} is not an SPDX licence id"
        if category in _NOT_REDISTRIBUTABLE:
            return f"{key} is a {category.lower()} licence that grants no right to redistribute"
        return None
    if isinstance(node, OR):
        # A choice: one licence that allows it is enough.
        problems = [_redistribution_problem(arg) for arg in node.args]
        return None if any(p is None for p in problems) else "; ".join(p for p in problems if p)
    if isinstance(node, AND):
        return next((p for arg in node.args if (p := _redistribution_problem(arg))), None)
    return f"{node} is not a licence expression"


def redistribution_refusal(licence: str) -> str | None:
    """Return why a licence forbids passing the design to another shop, or None if it allows it.

    Proprietary and "all rights reserved" licences, `LicenseRef-*` ids (terms unknown here)
    and ids that are not on the SPDX list are refused.
    """
    text = (licence or "").strip()
    if not text or text.upper() in {"NONE", "NOASSERTION"}:
        return f"the licence {text or '(none)'!r} states no right to redistribute"
    try:
        parsed = _licensing().parse(text)
    except Exception:  # the library raises odd types on some syntax errors
        return f"{text!r} is not a well-formed SPDX licence expression"
    if parsed is None:
        return f"{text!r} is not a well-formed SPDX licence expression"
    return _redistribution_problem(parsed)


def attribution_text(
    *, title: str, authors: list[str], licence: str, source_url: str | None
) -> str:
    """Return a one-line credit such as `"L-bracket" by Ana, Bo (CC-BY-4.0), source: URL`."""
    by = f" by {', '.join(authors)}" if authors else ""
    source = f", source: {source_url}" if source_url else ""
    return f"\u201c{title}\u201d{by} ({licence}){source}"


def attribution(design: Any) -> dict[str, Any]:
    """Return the attribution to copy onto every job made from a design."""
    flags = licence_flags(design.licence)
    return {
        "design_id": design.id,
        "title": design.title,
        "content_hash": design.content_hash,
        "licence": design.licence,
        "authors": list(design.authors or []),
        "source_url": design.source_url,
        "version": design.version,
        "derivative_of": design.derivative_of,
        "nd": flags["nd"],
        "nc": flags["nc"],
        "text": attribution_text(
            title=design.title,
            authors=list(design.authors or []),
            licence=design.licence,
            source_url=design.source_url,
        ),
    }


__all__ = [
    "LicenceFlags",
    "attribution",
    "attribution_text",
    "licence_flags",
    "normalise_licence",
    "redistribution_refusal",
]
