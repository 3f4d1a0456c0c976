"""The test command's scheduling: the hint names real files (a renamed file would drop
out), and xdist's workers get the longest files first."""

from __future__ import annotations

import types

import pytest

from tests import conftest
from tests.conftest import LONGEST_FILES, REPO


def test_every_file_listed_as_longest_exists() -> None:
    missing = [name for name in LONGEST_FILES if not (REPO / name).is_file()]
    assert missing == []


class _Node:
    """A stand-in for xdist's WorkerController: records what it is sent."""

    def __init__(self, name: str) -> None:
        self.gateway = types.SimpleNamespace(id=name)
        self.shutting_down = False
        self.sent: list[list[int]] = []

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.append(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def test_loadfile_hands_out_the_longest_files_first_and_only_when_a_worker_needs_one(
    pytestconfig: pytest.Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """xdist's own loadfile would start with short.py (most tests) and give the worker on
    long1.py a second file while both of long1.py's tests were still to run."""
    pytest.importorskip("xdist")
    monkeypatch.setattr(conftest, "FILE_SECONDS", {"t/long1.py": 100, "t/long2.py": 50})
    collection = [
        *(f"t/short.py::test_{i}" for i in range(5)),
        *(f"t/long2.py::test_{i}" for i in range(3)),
        *(f"t/long1.py::test_{i}" for i in range(2)),
        "t/single.py::test_0",
    ]
    monkeypatch.setattr(pytestconfig.option, "tx", ["2*popen"])  # as `-n 2` sets it
    scheduler = conftest._longest_file_first_scheduler(pytestconfig, None)
    first, second = _Node("gw0"), _Node("gw1")
    for node in (first, second):
        scheduler.add_node(node)
        scheduler.add_node_collection(node, collection)
    scheduler.schedule()

    def files(node: _Node) -> list[str]:
        return [collection[batch[0]].split("::")[0] for batch in node.sent]

    assert files(first) == ["t/long1.py"]
    assert files(second) == ["t/long2.py"]

    scheduler.mark_test_complete(first, collection.index("t/long1.py::test_0"))
    assert files(first) == ["t/long1.py", "t/short.py"]  # down to its last test
    scheduler.mark_test_complete(second, collection.index("t/long2.py::test_0"))
    assert files(second) == ["t/long2.py"]  # two still to run
    scheduler.mark_test_complete(second, collection.index("t/long2.py::test_1"))
    assert files(second) == ["t/long2.py", "t/single.py"]
    assert not scheduler.workqueue
