"""Deeply nested OKH manifests are refused at once, not parsed for minutes.

The issue: an okh.yml of 20,000 nested brackets took 154 s, then raised RecursionError (a 500).
"""

from __future__ import annotations

import httpx
import pytest

from microfactory.designs import okh
from microfactory.errors import InvalidInputError
from tests.designs.test_okh_import import IMPORT, make_zip

DEEP = 20_000


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("okh.yml", "title: x\nlicense: MIT\nx: " + "[" * DEEP + "]" * DEEP + "\n"),
        ("okh.yml", "title: x\nlicense: MIT\nx: " + "{a: " * DEEP + "1" + "}" * DEEP + "\n"),
        ("okh.toml", 'name = "x"\nlicense = "MIT"\nx = ' + "[" * DEEP + "]" * DEEP + "\n"),
        ("okh.toml", 'name = "x"\nx = ' + "{a = " * DEEP + "1" + "}" * DEEP + "\n"),
    ],
)
def test_deep_brackets_are_refused_naming_the_depth(name: str, text: str) -> None:
    with pytest.raises(InvalidInputError, match=f"nests lists or tables {DEEP} deep"):
        okh.parse_manifest(text.encode(), name)


def test_deep_indented_yaml_is_refused_not_a_recursion_error() -> None:
    # Block nesting has no brackets: 600 levels of indentation fit in the 256 KiB limit.
    lines = [" " * k + f"k{k}:" for k in range(600)]
    text = "title: x\nlicense: MIT\nx:\n" + "\n".join(" " + line for line in lines) + " 1\n"
    assert len(text) < okh.MAX_MANIFEST_BYTES
    with pytest.raises(InvalidInputError, match="nests too deep"):
        okh.parse_manifest(text.encode(), "okh.yml")


def test_ordinary_nesting_is_fine() -> None:
    assert okh.bracket_depth("a: [[1, 2], {b: [3]}]") == 3
    manifest = okh.parse_manifest(b"title: Bracket\nlicense: MIT\ntags: [a, [b]]\n", "okh.yml")
    assert manifest.title == "Bracket"


async def test_importing_a_deep_manifest_is_a_422(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    text = "title: x\nlicense: MIT\nx: " + "[" * DEEP + "]" * DEEP + "\n"
    archive = make_zip({"okh.yml": text.encode(), "part.scad": b"cube(1);"})
    resp = await client.post(
        IMPORT, files={"files": ("deep.zip", archive, "application/zip")}, headers=operator
    )
    assert resp.status_code == 422, resp.text
    assert "nests lists or tables" in resp.json()["detail"]
