"""Customizer parameters: parsing OpenSCAD's annotations, validating and quoting values."""

from __future__ import annotations

import pytest

from microfactory.errors import InvalidInputError
from microfactory.fabrication.customizer import (
    changed_names,
    define_args,
    parse_customizer,
    validate_values,
)
from tests.conftest import shared_data_dir

SCAD = """
// Label printed on the part
label = "hi"; // 8
/* [Options] */
size = 10; // [10:Small, 20:Large]
style = "a"; // [a:Alpha, b:Beta]
plain = "x"; // [foo, bar, x]
rounded = true;
offset = [1, 2]; // [0:10]
depth = 50; // [100]
ratio = 0.5; // [0:1]
derived = depth / 2;
/* [Hidden] */
secret = 3;
module foo() { inner = 4; }
after = 5;
"""


def test_the_sample_bracket_parameters() -> None:
    text = (shared_data_dir() / "designs" / "l-bracket" / "l-bracket.scad").read_text()
    params = {p.name: p for p in parse_customizer(text)}
    assert list(params) == ["width", "length", "thickness", "hole_d"]
    width = params["width"]
    assert (width.default, width.min, width.step, width.max) == (20, 10, 1, 60)
    assert (width.group, width.widget, width.integer) == ("Size", "slider", True)
    assert params["thickness"].step == 0.5
    assert params["thickness"].integer is False
    assert params["hole_d"].group == "Holes"
    assert [o.value for o in params["hole_d"].options] == [3, 4, 5, 6, 8]


def test_every_annotation_kind() -> None:
    params = {p.name: p for p in parse_customizer(SCAD)}
    names = ["label", "size", "style", "plain", "rounded", "offset", "depth", "ratio"]
    assert list(params) == names
    assert params["label"].description == "Label printed on the part"
    assert params["label"].max_length == 8
    assert [(o.value, o.label) for o in params["size"].options] == [(10, "Small"), (20, "Large")]
    assert [(o.value, o.label) for o in params["style"].options] == [("a", "Alpha"), ("b", "Beta")]
    assert [o.value for o in params["plain"].options] == ["foo", "bar", "x"]
    assert params["rounded"].type == "boolean"
    assert params["offset"].type == "vector"
    assert (params["depth"].min, params["depth"].max) == (0, 100)
    assert (params["ratio"].min, params["ratio"].max, params["ratio"].step) == (0, 1, None)
    assert params["size"].group == "Options"


def test_values_are_checked_and_coerced() -> None:
    params = parse_customizer(SCAD)
    values = validate_values(
        params,
        {"size": "20", "rounded": "off", "ratio": "0.25", "offset": [3, 4], "label": "ok"},
    )
    assert values["size"] == 20
    assert values["rounded"] is False
    assert values["ratio"] == 0.25
    assert values["offset"] == [3, 4]
    assert values["depth"] == 50  # defaults fill the rest
    assert changed_names(params, values) == ["label", "size", "rounded", "offset", "ratio"]


@pytest.mark.parametrize(
    ("values", "parameter", "needle"),
    [
        ({"size": 15}, "size", "not one of the allowed values"),
        ({"depth": 101}, "depth", "out of range: allowed 0 to 100"),
        ({"depth": "deep"}, "depth", "not a number"),
        ({"depth": float("nan")}, "depth", "finite"),
        ({"label": "too long label"}, "label", "longer than 8"),
        ({"label": "a\nb"}, "label", "control characters"),
        ({"style": "c"}, "style", "not one of the allowed values"),
        ({"rounded": "maybe"}, "rounded", "not true or false"),
        ({"offset": [1]}, "offset", "list of 2 numbers"),
        ({"offset": [1, 11]}, "offset", "out of range"),
        ({"secret": 1}, "secret", "unknown parameter"),
        ({"derived": 1}, "derived", "unknown parameter"),
    ],
)
def test_bad_values_are_refused_naming_the_parameter(
    values: dict[str, object], parameter: str, needle: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_values(parse_customizer(SCAD), values)
    assert caught.value.status_code == 422
    assert caught.value.extra["parameter"] == parameter
    assert needle in caught.value.detail


def test_step_is_enforced() -> None:
    text = "w = 20; // [10:5:60]\n"
    assert validate_values(parse_customizer(text), {"w": 35}) == {"w": 35}
    with pytest.raises(InvalidInputError, match="step of 5"):
        validate_values(parse_customizer(text), {"w": 33})


def test_values_are_quoted_as_literals_never_code() -> None:
    args = define_args({"s": 'x"); import("/etc/passwd', "n": 2.5, "b": True, "v": [1, 2]})
    assert args == [
        "-D",
        's="x\\"); import(\\"/etc/passwd"',
        "-D",
        "n=2.5",
        "-D",
        "b=true",
        "-D",
        "v=[1,2]",
    ]
    with pytest.raises(ValueError, match="identifier"):
        define_args({"a=1;b": 1})
