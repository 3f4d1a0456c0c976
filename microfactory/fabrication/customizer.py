"""OpenSCAD Customizer parameters: parse them from .scad text, validate values, quote them.

The syntax is OpenSCAD's own (manual: "Customizer"):

    /* [Size] */                 a tab (group); [Hidden] hides what follows
    // Width of the bracket      a comment line just above is the description
    width = 20;   // [10:1:60]   slider: min:step:max   ([10:60] min:max; [60] max)
    hole = 5;     // [3, 4, 5]   drop-down of values
    size = 10;    // [10:Small, 20:Large]   labelled drop-down
    name = "x";   // 8           a string of at most 8 characters
    round = true;                a checkbox

Only literal assignments at the top level before the first module or function count, as in
OpenSCAD: an expression such as `h = length / 2;` is derived, not a parameter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from microfactory.errors import InvalidInputError

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_NUMBER_RE = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")
_STRING_RE = re.compile(r'^"((?:[^"\\]|\\.)*)"$')
_ASSIGN_RE = re.compile(rf"^\s*({_IDENT})\s*=\s*(.+?)\s*;\s*(?://\s*(.*?))?\s*$")
_TAB_RE = re.compile(r"^\s*/\*\s*\[([^\]]+)\]\s*\*/\s*$")
_DEFINITION_RE = re.compile(r"^\s*(module|function)\s")
_LINE_COMMENT_RE = re.compile(r"^\s*//\s?(.*)$")

MAX_STRING = 1000  # a string parameter longer than this is not a parameter, it is a payload
MAX_VECTOR = 4  # the Customizer shows vectors of up to four numbers


@dataclass
class Option:
    """One choice of a drop-down."""

    value: float | int | str
    label: str


@dataclass
class Parameter:
    """One Customizer parameter, with what the form needs to draw it."""

    name: str
    type: str  # number, string, boolean, vector
    default: Any
    group: str = "Parameters"
    description: str = ""
    widget: str = "spinbox"  # slider, spinbox, dropdown, checkbox, text
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: list[Option] = field(default_factory=list)
    max_length: int | None = None
    integer: bool = False  # whole numbers only (an integer default and step)

    def as_dict(self) -> dict[str, Any]:
        """Return JSON-ready data."""
        return asdict(self)

    def allowed(self) -> dict[str, Any]:
        """Describe the allowed values, for error messages."""
        if self.options:
            return {"options": [o.value for o in self.options]}
        out: dict[str, Any] = {}
        for key in ("min", "max", "step", "max_length"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


# -- parsing -------------------------------------------------------------------------------


def _number(text: str) -> int | float | None:
    text = text.strip()
    if not _NUMBER_RE.match(text):
        return None
    value = float(text)
    if not math.isfinite(value):
        return None
    if re.match(r"^[-+]?\d+$", text):
        return int(text)
    return value


def _string(text: str) -> str | None:
    m = _STRING_RE.match(text.strip())
    if not m:
        return None
    return re.sub(r"\\(.)", r"\1", m.group(1))


def _literal(text: str) -> tuple[str, Any] | None:
    """Return (type, value) of a literal, or None for an expression."""
    text = text.strip()
    if text in ("true", "false"):
        return "boolean", text == "true"
    number = _number(text)
    if number is not None:
        return "number", number
    string = _string(text)
    if string is not None:
        return "string", string
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        items = [_number(p) for p in inner.split(",")] if inner else []
        if items and len(items) <= MAX_VECTOR and all(i is not None for i in items):
            return "vector", items
    return None


def _split_options(body: str) -> list[str]:
    """Split `a, "b, c", d` on commas outside quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in body:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def _option_value(text: str, kind: str) -> float | int | str | None:
    text = text.strip()
    if kind == "number":
        return _number(text)
    quoted = _string(text)
    return quoted if quoted is not None else text


def _apply_spec(param: Parameter, spec: str) -> None:
    """Read the trailing `// [...]` comment into the parameter's widget."""
    spec = spec.strip()
    if param.type == "string" and re.fullmatch(r"\d+", spec):
        param.max_length = int(spec)
        return
    if not (spec.startswith("[") and spec.endswith("]")):
        if spec and not param.description:
            param.description = spec
        return
    body = spec[1:-1].strip()
    if param.type in ("number", "vector") and ":" in body and "," not in body:
        bounds = [_number(p) for p in body.split(":")]
        if all(b is not None for b in bounds) and len(bounds) in (2, 3):
            nums = [float(b) for b in bounds if b is not None]
            if len(nums) == 2:
                param.min, param.max = nums
            else:
                param.min, param.step, param.max = nums
            param.widget = "slider"
            return
    if param.type in ("number", "vector") and _number(body) is not None:
        param.min, param.max = 0.0, float(_number(body) or 0)
        param.widget = "slider"
        return
    if param.type in ("number", "string"):
        options = []
        for part in _split_options(body):
            value_text, label = part, None
            # `10:Small` or `S:Small`; a quoted value may hold a colon.
            m = re.match(r'^("(?:[^"\\]|\\.)*"|[^:]+):(.*)$', part)
            if m:
                value_text, label = m.group(1), m.group(2).strip()
            value = _option_value(value_text, param.type)
            if value is None:
                return  # not a list of this parameter's type: no widget, any value
            options.append(Option(value=value, label=label or str(value)))
        if options:
            param.options = options
            param.widget = "dropdown"


def parse_customizer(text: str) -> list[Parameter]:
    """Return the Customizer parameters of a .scad file, in file order."""
    params: list[Parameter] = []
    group = "Parameters"
    hidden = False
    depth = 0
    in_block_comment = False
    last_comment: str | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        if in_block_comment:
            if "*/" in line:
                in_block_comment = False
            last_comment = None
            continue
        tab = _TAB_RE.match(line)
        if tab and depth == 0:
            group = tab.group(1).strip()
            hidden = group.lower() == "hidden"
            last_comment = None
            continue
        if line.lstrip().startswith("/*"):
            in_block_comment = "*/" not in line
            last_comment = None
            continue
        if depth == 0 and _DEFINITION_RE.match(line):
            break
        comment = _LINE_COMMENT_RE.match(line)
        if comment:
            last_comment = comment.group(1).strip()
            continue
        assign = _ASSIGN_RE.match(line) if depth == 0 else None
        if assign and not hidden:
            name, value_text, spec = assign.group(1), assign.group(2), assign.group(3)
            literal = _literal(value_text)
            if literal is not None and name not in {p.name for p in params}:
                kind, value = literal
                param = Parameter(
                    name=name,
                    type=kind,
                    default=value,
                    group=group,
                    description=last_comment or "",
                    widget={"boolean": "checkbox", "string": "text"}.get(kind, "spinbox"),
                )
                if spec:
                    _apply_spec(param, spec)
                param.integer = (
                    kind == "number"
                    and isinstance(value, int)
                    and not param.options
                    and (param.step is None or float(param.step).is_integer())
                    and (param.min is None or float(param.min).is_integer())
                )
                params.append(param)
        # Track braces (outside strings and // comments) so assignments inside modules,
        # functions and blocks are not taken for parameters.
        code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', line.split("//", 1)[0])
        depth = max(0, depth + code.count("{") - code.count("}"))
        last_comment = None
    return params


# -- validating ----------------------------------------------------------------------------


def _refuse(param: Parameter, value: Any, why: str) -> InvalidInputError:
    return InvalidInputError(
        f"parameter {param.name!r}: {value!r} {why}",
        parameter=param.name,
        allowed=param.allowed(),
    )


def _as_number(param: Parameter, value: Any) -> float:
    if isinstance(value, bool):
        raise _refuse(param, value, "is not a number")
    if isinstance(value, int | float) or (isinstance(value, str) and _number(value) is not None):
        number = float(value)
    else:
        raise _refuse(param, value, "is not a number")
    if not math.isfinite(number):
        raise _refuse(param, value, "is not a finite number")
    return number


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _check_range(param: Parameter, number: float, shown: Any) -> None:
    lo, hi, step = param.min, param.max, param.step
    if (lo is not None and number < lo - 1e-9) or (hi is not None and number > hi + 1e-9):
        low = _fmt(lo) if lo is not None else "-inf"
        high = _fmt(hi) if hi is not None else "inf"
        bounds = f"{low} to {high}"
        raise _refuse(param, shown, f"is out of range: allowed {bounds}")
    if step:
        k = (number - (lo or 0.0)) / step
        if abs(k - round(k)) > 1e-6:
            raise _refuse(param, shown, f"is not on a step of {_fmt(step)} from {_fmt(lo or 0)}")


def _validate_one(param: Parameter, value: Any) -> Any:
    if param.type == "boolean":
        if isinstance(value, bool):
            return value
        truthy, falsy = ("true", "on", "1", "yes"), ("false", "off", "0", "no")
        if isinstance(value, str) and value.lower() in truthy + falsy:
            return value.lower() in truthy
        raise _refuse(param, value, "is not true or false")
    if param.type == "number":
        number = _as_number(param, value)
        if param.options:
            for option in param.options:
                if isinstance(option.value, int | float) and abs(option.value - number) < 1e-9:
                    return option.value
            raise _refuse(param, value, "is not one of the allowed values")
        _check_range(param, number, value)
        if param.integer:
            if not number.is_integer():
                raise _refuse(param, value, "is not a whole number")
            return int(number)
        return int(number) if number.is_integer() and isinstance(param.default, int) else number
    if param.type == "string":
        if not isinstance(value, str):
            raise _refuse(param, value, "is not text")
        if any(not ch.isprintable() for ch in value):
            raise _refuse(param, value, "holds control characters")
        limit = param.max_length if param.max_length is not None else MAX_STRING
        if len(value) > limit:
            raise _refuse(param, value, f"is longer than {limit} characters")
        if param.options and value not in [o.value for o in param.options]:
            raise _refuse(param, value, "is not one of the allowed values")
        return value
    # vector
    items = value
    if isinstance(value, str):
        items = [p for p in value.strip().strip("[]").split(",") if p.strip()]
    if not isinstance(items, list | tuple) or len(items) != len(param.default):
        raise _refuse(param, value, f"is not a list of {len(param.default)} numbers")
    out = []
    for item in items:
        number = _as_number(param, item)
        _check_range(param, number, value)
        out.append(int(number) if number.is_integer() else number)
    return out


def validate_values(params: list[Parameter], values: Mapping[str, Any]) -> dict[str, Any]:
    """Return every parameter's value: the defaults with `values` applied; 422 on bad input."""
    by_name = {p.name: p for p in params}
    for name in values:
        if name not in by_name:
            known = ", ".join(by_name) or "none"
            raise InvalidInputError(
                f"unknown parameter {name!r}; this design's parameters are: {known}",
                parameter=name,
            )
    result: dict[str, Any] = {}
    for param in params:
        result[param.name] = (
            _validate_one(param, values[param.name]) if param.name in values else param.default
        )
    return result


def changed_names(params: list[Parameter], values: Mapping[str, Any]) -> list[str]:
    """Return the names of parameters whose value differs from the design's default."""
    out = []
    for param in params:
        if param.name not in values:
            continue
        value, default = values[param.name], param.default
        if param.type in ("number", "vector"):
            a = value if isinstance(value, list) else [value]
            b = default if isinstance(default, list) else [default]
            same = len(a) == len(b) and all(
                abs(float(x) - float(y)) < 1e-9 for x, y in zip(a, b, strict=True)
            )
        else:
            same = value == default
        if not same:
            out.append(param.name)
    return out


# -- quoting for `openscad -D` -------------------------------------------------------------


def scad_literal(value: Any) -> str:
    """Return an OpenSCAD literal for a validated value (never an expression)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        return repr(value)
    if isinstance(value, str):
        if any(not ch.isprintable() for ch in value):
            raise ValueError("control characters in a string parameter")
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ",".join(scad_literal(v) for v in value) + "]"
    raise ValueError(f"cannot pass {type(value).__name__} to OpenSCAD")


def define_args(values: Mapping[str, Any]) -> list[str]:
    """Return `-D name=value` arguments for OpenSCAD (one argv item each, no shell)."""
    args: list[str] = []
    for name, value in values.items():
        if not re.fullmatch(_IDENT, name):
            raise ValueError(f"{name!r} is not an OpenSCAD identifier")
        args += ["-D", f"{name}={scad_literal(value)}"]
    return args
