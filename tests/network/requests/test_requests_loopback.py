"""Fabrication requests on the loopback: shops A and B as two `microfactory serve` processes.

A's member sends a public design to B; B's operator accepts it with a quote from B's rates,
which imports the design from A by content hash and makes it a job at B; B's queue runs
it on a simulated printer (sim-marlin), whose start and cleared bed (good) are reported to A
by themselves; B's operator reports it collected. A's member sees every step, each a
message signed by B that A checked. A replayed or forged update, sent to A by hand, is
refused.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from jwcrypto import jwk as jc_jwk
from jwcrypto import jws as jc_jws

from tests.network.test_network_loopback import Instance, _flip_payload_byte, poll
from tests.peers.microfactory_server import user_commands

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

GCODE = b"G21\nG90\nM82\nG92 E0\nG1 X10 Y10 E1 F1200\nG1 X20 Y10 E2\n"
JOSE = {"Content-Type": "application/jose"}


def _profile(shop: Instance, name: str) -> str:
    body = {"name": name, "url": shop.url, "city": name, "country": "BE", "accessType": "Public"}
    resp = shop.api("PUT", "/api/v1/network/profile", json=body)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["shop_id"])


@pytest.fixture(scope="module")
def shops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("requests")
    started: list[Instance] = []
    try:
        a = Instance(root, "a")
        started.append(a)
        b = Instance(root, "b", MICROFACTORY_AUTO_DISPATCH="true")
        started.append(b)
        made = a.cli_batch(*user_commands("maria", "member", "member-password-1"))
        member = made[-1].strip().splitlines()[-1]
        for inst in started:
            inst.wait_up()
        ids = {"a": _profile(a, "Fablab Gent"), "b": _profile(b, "Brussels Makers")}
        resp = b.api(
            "POST", "/api/v1/machines",
            json={"name": "MK4", "kind": "fdm_printer", "driver": "sim-marlin",
                  "connection": {"speed_factor": 0, "baud": 0},
                  "build_volume_mm": {"x": 250, "y": 210, "z": 220},
                  "capabilities": {"nozzle_diameter_mm": 0.4, "materials": ["PLA"],
                                   "loaded_material": "PLA", "max_hotend_c": 280,
                                   "max_bed_c": 110}},
        )  # fmt: skip
        assert resp.status_code == 201, resp.text
        for path, body in (
            ("/api/v1/rates/machine-kinds/fdm_printer", {"cents_per_hour": 400}),
            ("/api/v1/rates/materials/PLA", {"cents_per_kg": 2500}),
        ):
            assert b.api("PUT", path, json=body).status_code == 200
        yield {
            "a": a, "b": b, "ids": ids, "member": {"Authorization": f"Bearer {member}"},
            "cookie": {"mf_session": member},  # the dashboard takes the token as its session
        }  # fmt: skip
    finally:
        for inst in started:
            inst.stop()


def test_a_members_request_is_quoted_made_and_reported_back(shops: dict[str, Any]) -> None:
    a, b, ids, member = shops["a"], shops["b"], shops["ids"], shops["member"]
    design = httpx.post(
        f"{a.url}/api/v1/designs",
        headers=member,
        data={"title": "Cable clip", "licence": "CC-BY-4.0", "authors": ["Maria Peeters"],
              "visibility": "public"},
        files={"files": ("clip.gcode", GCODE, "text/x-gcode")},
        timeout=30,
    )  # fmt: skip
    assert design.status_code == 201, design.text
    content_hash = design.json()["content_hash"]
    due = (dt.date.today() + dt.timedelta(days=10)).isoformat()

    sent = httpx.post(
        f"{a.url}/api/v1/network/requests/send",
        headers=member,
        json={"shop_url": b.url, "shop_id": ids["b"], "design_id": design.json()["id"],
              "material": "PLA", "quantity": 1, "due_date": due,
              "contact": "maria@example.org"},
        timeout=30,
    )  # fmt: skip
    assert sent.status_code == 201, sent.text
    request_id = sent.json()["id"]
    assert sent.json()["state"] == "sent"
    assert sent.json()["messages"][0]["delivery"].startswith("HTTP 201")
    requester = sent.json()["requester"]
    assert "maria" not in requester

    # B's operators see it, with the pseudonym and the contact the member chose to share.
    incoming = b.api("GET", f"/api/v1/network/requests/{request_id}")
    assert incoming.status_code == 200, incoming.text
    got = incoming.json()
    assert (got["direction"], got["state"], got["peer_shop_id"]) == (
        "incoming",
        "received",
        ids["a"],
    )
    assert (got["requester"], got["contact"]) == (requester, "maria@example.org")
    # The request A signed verifies with an independent JOSE library and A's published key.
    a_key = httpx.get(f"{a.url}/api/v1/network/keys").json()["keys"][0]
    checker = jc_jws.JWS()
    checker.deserialize(got["messages"][0]["jws"])
    checker.verify(jc_jwk.JWK(**a_key))

    accepted = b.api(
        "POST", f"/api/v1/network/requests/{request_id}/accept",
        json={"hours": 1.5, "material_g": 20, "note": "we can do it this week"},
    )  # fmt: skip
    assert accepted.status_code == 200, accepted.text
    quote = accepted.json()["quote"]
    # 1.5 h × 4.00/h + 20 g × 25.00/kg = 6.00 + 0.50, at B's own rates
    assert (quote["machineCents"], quote["materialCents"]) == (600, 50)
    assert quote["totalCents"] == 650
    job_id = accepted.json()["job_id"]
    # The design's G-code is made ready for B's queue after the commit.
    job = poll(
        lambda: (
            (j := b.api("GET", f"/api/v1/jobs/{job_id}").json())["preparation"]
            in ("ready", "failed")
            and j
        ),
        60,
        "the job's preparation at B",
    )
    assert job["preparation"] == "ready", job.get("failure_reason")
    assert job["state"] not in ("failed", "cancelled"), job.get("failure_reason")
    assert job["price"] == 6.5
    assert "Maria Peeters" in str(job["attribution"])
    # The design came by hash from A, with its licence, authors and provenance.
    held = b.api("GET", f"/api/v1/designs/by-hash/{content_hash}").json()
    assert held["licence"] == "CC-BY-4.0"
    assert held["authors"] == ["Maria Peeters"]
    assert held["provenance"][-1]["shop_url"] == a.url

    # B's queue runs the job on its (simulated) printer by itself: A hears it started.
    def a_sees(state: str) -> dict[str, Any] | None:
        body = httpx.get(f"{a.url}/api/v1/network/requests/{request_id}", headers=member).json()
        return body if body["state"] == state else None

    poll(lambda: a_sees("started"), 60, "A to hear the job started")
    poll(
        lambda: b.api("GET", f"/api/v1/jobs/{job_id}").json()["state"] == "finished",
        120,
        "the job to finish on B's printer",
    )
    cleared = b.api("POST", f"/api/v1/jobs/{job_id}/clear", json={"outcome": "good"})
    assert cleared.status_code == 200, cleared.text
    poll(lambda: a_sees("finished"), 60, "A to hear the job finished")

    seen = httpx.get(f"{a.url}/api/v1/network/requests/{request_id}", headers=member).json()
    assert seen["state"] == "finished"
    assert seen["outcome"] == "good"
    assert seen["quote"] == quote
    assert [(m["direction"], m["kind"]) for m in seen["messages"]] == [
        ("sent", "request"), ("received", "accepted"), ("received", "started"),
        ("received", "finished"),
    ]  # fmt: skip
    sent_by_b = b.api("GET", f"/api/v1/network/requests/{request_id}").json()["messages"]
    assert all(m["delivery"].startswith("HTTP 200") for m in sent_by_b[1:]), sent_by_b
    collected = b.api(
        "POST", f"/api/v1/network/requests/{request_id}/progress", json={"status": "collected"}
    )
    assert collected.status_code == 200, collected.text
    assert a_sees("collected")
    page = httpx.get(f"{a.url}/network/requests/{request_id}", cookies=shops["cookie"])
    assert page.status_code == 200, page.text
    assert "finished" in page.text
    assert "6.50" in page.text

    # B's last update, sent to A again, is a replay; a byte changed in it, a forgery.
    last = seen["messages"][-1]["jws"]
    url = f"{a.url}/api/v1/network/requests/{request_id}/updates"
    assert httpx.post(url, content=last, headers=JOSE).status_code == 409
    forged = httpx.post(url, content=_flip_payload_byte(last), headers=JOSE)
    assert forged.status_code in (400, 401), forged.text
