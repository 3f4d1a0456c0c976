"""A web worker's machine handle must take every call the routes make on a supervisor."""

from __future__ import annotations

import inspect
import json

import pytest

from microfactory.runtime.remote import MAX_PAYLOAD_BYTES, RemoteMachine, envelopes_of
from microfactory.runtime.supervisor import Supervisor


@pytest.mark.parametrize(
    "name", ["start_job", "pause", "resume", "cancel", "emergency_stop", "send_commands", "reset"]
)
def test_remote_machine_matches_the_supervisor(name: str) -> None:
    ours = inspect.signature(getattr(RemoteMachine, name))
    theirs = inspect.signature(getattr(Supervisor, name))
    assert list(ours.parameters) == list(theirs.parameters)
    for param, other in zip(ours.parameters.values(), theirs.parameters.values(), strict=True):
        assert (param.kind, param.default) == (other.kind, other.default), param.name


def test_a_large_status_snapshot_fits_notify_payloads_and_comes_back_whole() -> None:
    # 60 machines' statuses, full of characters JSON escapes: every payload must stay under
    # PostgreSQL's 8,000 bytes (a 30-machine snapshot once overflowed and stopped heartbeats).
    status = {"state": "printing", "message": 'say "hi" \\ ' * 20, "name": "Ümlaut ✓" * 10}
    message = {"full": True, "machines": {str(i): status for i in range(60)}}
    envelopes = envelopes_of(message)
    assert len(envelopes) > 1
    assert all(len(e.encode()) <= MAX_PAYLOAD_BYTES for e in envelopes)
    parts = [json.loads(e) for e in envelopes]
    assert json.loads("".join(p["d"] for p in sorted(parts, key=lambda p: p["i"]))) == message
