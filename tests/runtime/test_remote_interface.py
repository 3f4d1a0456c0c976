"""A web worker's machine handle must take every call the routes make on a supervisor."""

from __future__ import annotations

import inspect

import pytest

from microfactory.runtime.remote import RemoteMachine
from microfactory.runtime.supervisor import Supervisor


@pytest.mark.parametrize(
    "name", ["start_job", "pause", "resume", "cancel", "emergency_stop", "send_commands"]
)
def test_remote_machine_matches_the_supervisor(name: str) -> None:
    ours = inspect.signature(getattr(RemoteMachine, name))
    theirs = inspect.signature(getattr(Supervisor, name))
    assert list(ours.parameters) == list(theirs.parameters)
    for param, other in zip(ours.parameters.values(), theirs.parameters.values(), strict=True):
        assert (param.kind, param.default) == (other.kind, other.default), param.name
