"""The test command's scheduling hint names real files (a renamed file would drop out)."""

from __future__ import annotations

from tests.conftest import LONGEST_FILES, REPO


def test_every_file_listed_as_longest_exists() -> None:
    missing = [name for name in LONGEST_FILES if not (REPO / name).is_file()]
    assert missing == []
