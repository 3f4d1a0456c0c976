"""Make this elsewhere, in Chromium, across two shops (real `microfactory serve` processes).

Shop A (Gent) is also the network's hub; shop B (Brussels) has a printer. A member of A
opens a public design, clicks "Make this elsewhere", picks B among the shops the hub ranks,
and sends; B's operator accepts it from B's page; the member's page at A follows the
request live: accepted, then started and finished as B's operator reports them.

The same two processes (they are expensive) then serve the requests' robustness over
HTTP: an acceptance refused after the import keeps nothing, a counter-offer agreed at A
is accepted at B by itself, and B's answer to A while A is down is delivered once A is back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import login
from tests.network.test_network_loopback import Instance
from tests.peers.microfactory_server import poll

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

JOSE = {"Content-Type": "application/jose"}
GCODE = b"G21\nG90\nM82\nG92 E0\nG1 X10 Y10 E1 F1200\nG1 X20 Y10 E2\n"
SHOTS = Path("/tmp")


def _profile(shop: Instance, name: str, city: str, where: tuple[float, float]) -> str:
    body = {"name": name, "url": shop.url, "city": city, "country": "BE", "lat": where[0],
            "lon": where[1], "accessType": "Public"}  # fmt: skip
    resp = shop.api("PUT", "/api/v1/network/profile", json=body)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["shop_id"])


@pytest.fixture(scope="module")
def shops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("make-elsewhere")
    started: list[Instance] = []
    try:
        # A is its own hub (and B's): one process fewer than a separate hub.
        from tests.peers.microfactory_server import free_port

        port = free_port()
        a_url = f"http://127.0.0.1:{port}"
        a = _PinnedPort(root, "a", port, MICROFACTORY_HUB="true", MICROFACTORY_HUB_OPEN="true",
                        MICROFACTORY_NETWORK_HUBS=a_url)  # fmt: skip
        started.append(a)
        b = Instance(root, "b", MICROFACTORY_NETWORK_HUBS=a_url)
        started.append(b)
        a.cli(
            "user", "create", "--username", "maria", "--role", "member", "--password-stdin",
            stdin="member-password-1\n",
        )  # fmt: skip
        member = a.cli("token", "create", "--username", "maria").strip().splitlines()[-1]
        for inst in started:
            inst.wait_up()
        ids = {
            "a": _profile(a, "Fablab Gent", "Gent", (51.05, 3.72)),
            "b": _profile(b, "Brussels Makers", "Brussels", (50.85, 4.35)),
        }
        printer = b.api(
            "POST", "/api/v1/machines",
            json={"name": "MK4", "kind": "fdm_printer", "driver": "manual",
                  "build_volume_mm": {"x": 250, "y": 210, "z": 220},
                  "capabilities": {"materials": ["PLA"], "nozzle_diameter_mm": 0.4}},
        )  # fmt: skip
        assert printer.status_code == 201, printer.text
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


class _PinnedPort(Instance):
    """An instance on a port chosen before it starts (its own URL is in its settings)."""

    def __init__(self, root: Path, name: str, port: int, **env: str) -> None:
        self._port = port
        super().__init__(root, name, **env)

    def start(self) -> None:
        self.port = self._port
        self.url = f"http://127.0.0.1:{self.port}"
        super().start()


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"net-requests-2-{name}.png"), full_page=True)


def test_a_member_makes_a_design_elsewhere_and_follows_it_live(
    browser: Any, shops: dict[str, Any]
) -> None:
    a, b, ids = shops["a"], shops["b"], shops["ids"]
    design = httpx.post(
        f"{a.url}/api/v1/designs", headers=shops["member"],
        data={"title": "Cable clip", "licence": "CC-BY-4.0", "authors": ["Maria Peeters"],
              "visibility": "public"},
        files={"files": ("clip.gcode", GCODE, "text/x-gcode")}, timeout=30,
    )  # fmt: skip
    assert design.status_code == 201, design.text

    # Both shops' reports reach the hub (A) before the member asks it to route.
    def listed() -> bool:
        shops_ = httpx.get(f"{a.url}/api/v1/network/shops", timeout=10).json()["shops"]
        by_id = {s["shop_id"]: s for s in shops_}
        return ids["a"] in by_id and bool(by_id.get(ids["b"], {}).get("processes"))

    poll(listed, 90, "both shops' capacity reports on the hub (B's with its printer)")

    # A tells the hub which public designs it holds on its own push round: wait for the
    # round that carries the new design before the member opens its page.
    def held() -> bool:
        url = f"{a.url}/api/v1/network/designs/{design.json()['content_hash']}"
        got = httpx.get(url, timeout=10)
        return got.status_code == 200 and any(
            s.get("shop_id") == ids["a"] for s in got.json()["shops"]
        )

    poll(held, 90, "the hub's design index listing A as a holder of the new design")

    member_ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    operator_ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        mp = member_ctx.new_page()
        mp.set_default_timeout(20_000)
        login(mp, a.url, "maria", "member-password-1")
        mp.goto(f"{a.url}/designs/{design.json()['id']}")
        # The hub's design index: A told it which public designs it holds.
        mp.wait_for_selector("#holder-list", timeout=30_000)
        assert "Fablab Gent" in mp.inner_text("#holders")
        _shot(mp, "design")
        mp.get_by_role("button", name="Make this elsewhere").click()
        mp.wait_for_url("**/network/requests/new?design_id=*")
        mp.get_by_label("Material").first.fill("PLA")
        mp.get_by_role("button", name="Find shops").click()
        mp.wait_for_selector("#routed-shops")
        row = mp.locator("#routed-shops tbody tr", has_text="Brussels Makers")
        assert " km" in row.inner_text()
        assert "UTC" in row.inner_text()  # its earliest finish
        _shot(mp, "send-form")
        row.get_by_role("radio").check()
        mp.get_by_role("button", name="Send the request").click()
        mp.wait_for_url("**/network/requests/*-*")
        assert mp.inner_text("#request-state") == "sent"
        request_id = mp.url.split("/network/requests/")[1].split("?")[0]

        op = operator_ctx.new_page()
        op.set_default_timeout(20_000)
        login(op, b.url, "admin", "admin-password-1")
        op.goto(f"{b.url}/network/requests/{request_id}")
        assert op.inner_text("#request-state") == "received"
        op.get_by_label("Machine hours per piece").first.fill("1")
        _shot(op, "operator-b")
        op.get_by_role("button", name="Accept with a quote from our rates").click()
        op.wait_for_selector("text=Report progress")
        assert op.inner_text("#request-state") == "accepted"

        # The member's page follows the request by itself: no reload by hand.
        mp.wait_for_function(
            "document.getElementById('request-state').textContent === 'accepted'",
            timeout=30_000,
        )
        _shot(mp, "member-accepted")
        op.get_by_role("button", name="Started").click()
        op.wait_for_selector("#p-outcome")
        mp.wait_for_function(
            "document.getElementById('request-state').textContent === 'started'", timeout=30_000
        )
        op.select_option("#p-outcome", "good")
        op.get_by_role("button", name="Finished").click()
        op.wait_for_selector("button:has-text('Collected')")
        mp.wait_for_function(
            "document.getElementById('request-state').textContent === 'finished'",
            timeout=30_000,
        )
        log = mp.inner_text("#request-log")
        for kind in ("request", "accepted", "started", "finished"):
            assert kind in log
        _shot(mp, "member-finished")
    finally:
        member_ctx.close()
        operator_ctx.close()
    due = (dt.date.today() + dt.timedelta(days=14)).isoformat()
    seen = httpx.get(f"{a.url}/api/v1/network/requests/{request_id}", headers=shops["member"])
    assert (seen.json()["state"], seen.json()["outcome"], seen.json()["due_date"]) == (
        "finished", "good", due,
    )  # fmt: skip


def _design(shop: Instance, member: dict[str, str], title: str, licence: str) -> dict[str, Any]:
    resp = httpx.post(
        f"{shop.url}/api/v1/designs",
        headers=member,
        data={"title": title, "licence": licence, "authors": ["Maria Peeters"],
              "visibility": "public"},
        files={"files": (f"{title.lower().replace(' ', '-')}.gcode", GCODE, "text/x-gcode")},
        timeout=30,
    )  # fmt: skip
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def _send(shops: dict[str, Any], design: dict[str, Any]) -> str:
    a, b, ids = shops["a"], shops["b"], shops["ids"]
    due = (dt.date.today() + dt.timedelta(days=10)).isoformat()
    sent = httpx.post(
        f"{a.url}/api/v1/network/requests/send",
        headers=shops["member"],
        json={"shop_url": b.url, "shop_id": ids["b"], "design_id": design["id"],
              "material": "PLA", "quantity": 1, "due_date": due},
        timeout=30,
    )  # fmt: skip
    assert sent.status_code == 201, sent.text
    return str(sent.json()["id"])


def _at_a(shops: dict[str, Any], request_id: str) -> dict[str, Any]:
    resp = httpx.get(
        f"{shops['a'].url}/api/v1/network/requests/{request_id}", headers=shops["member"]
    )
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_an_acceptance_refused_after_the_import_keeps_nothing_and_can_be_made_again(
    shops: dict[str, Any],
) -> None:
    b = shops["b"]
    design = _design(shops["a"], shops["member"], "Desk hook", "CC-BY-NC-4.0")
    request_id = _send(shops, design)
    files = b.dir / "data" / "files"
    before = sorted(p.name for p in files.iterdir()) if files.exists() else []
    # The design is fetched from A by hash, then pricing refuses (an NC licence): nothing
    # of the attempt is kept at B, and the request waits to be accepted again.
    priced = b.api(
        "POST", f"/api/v1/network/requests/{request_id}/accept",
        json={"hours": 1, "material_g": 10},
    )  # fmt: skip
    assert priced.status_code == 422, priced.text
    assert "non-commercial" in priced.json()["detail"]
    got = b.api("GET", f"/api/v1/network/requests/{request_id}").json()
    assert (got["state"], got["job_id"], got["design_id"]) == ("received", None, None)
    assert b.api("GET", f"/api/v1/designs/by-hash/{design['content_hash']}").status_code == 404
    assert sorted(p.name for p in files.iterdir()) == before  # no fetched copy left over
    free = b.api("POST", f"/api/v1/network/requests/{request_id}/accept", json={})
    assert free.status_code == 200, free.text
    assert free.json()["state"] == "accepted"
    held = b.api("GET", f"/api/v1/designs/by-hash/{design['content_hash']}")
    assert held.status_code == 200, held.text
    poll(lambda: _at_a(shops, request_id)["state"] == "accepted", 30, "A to hear accepted")


def test_a_member_agrees_to_a_counter_offer_and_the_other_shop_makes_it(
    shops: dict[str, Any],
) -> None:
    a, b = shops["a"], shops["b"]
    design = _design(a, shops["member"], "Wall bracket", "CC-BY-4.0")
    request_id = _send(shops, design)
    later = (dt.date.today() + dt.timedelta(days=20)).isoformat()
    countered = b.api(
        "POST", f"/api/v1/network/requests/{request_id}/counter",
        json={"date": later, "reason": "our printers are booked until then",
              "hours": 2, "material_g": 40},
    )  # fmt: skip
    assert countered.status_code == 200, countered.text
    assert countered.json()["state"] == "countered"

    seen = poll(
        lambda: (r := _at_a(shops, request_id))["state"] == "countered" and r,
        30,
        "A to hear the counter-offer",
    )
    assert seen["proposed_date"] == later
    # 2 h × 4.00/h + 40 g × 25.00/kg, at B's rates: the quote comes with the offer.
    assert seen["quote"]["totalCents"] == 900
    page = httpx.get(f"{a.url}/network/requests/{request_id}", cookies=shops["cookie"])
    assert "Accept the new date" in page.text

    agreed = httpx.post(
        f"{a.url}/api/v1/network/requests/{request_id}/reply",
        headers=shops["member"], json={"agree": True}, timeout=30,
    )  # fmt: skip
    assert agreed.status_code == 200, agreed.text
    assert agreed.json()["state"] == "agreed"
    reply = agreed.json()["messages"][-1]
    assert (reply["direction"], reply["kind"], reply["delivery_state"]) == (
        "sent", "agreed", "delivered",
    )  # fmt: skip
    # At B the agreement accepts the request with the counter's terms: a job is made, and
    # A hears "accepted" with the quote it agreed to.
    accepted = poll(
        lambda: (r := _at_a(shops, request_id))["state"] == "accepted" and r,
        60,
        "A to hear its agreement accepted",
    )
    assert accepted["quote"]["totalCents"] == 900
    at_b = b.api("GET", f"/api/v1/network/requests/{request_id}").json()
    assert at_b["state"] == "accepted"
    assert at_b["job_id"] is not None
    assert at_b["due_date"] == later
    assert [m["kind"] for m in at_b["messages"]] == ["request", "countered", "agreed", "accepted"]
    # An agreement replayed to B is refused; agreeing twice at A is a 409.
    replay = httpx.post(
        f"{b.url}/api/v1/network/requests/{request_id}/updates",
        content=reply["jws"], headers=JOSE,
    )  # fmt: skip
    assert replay.status_code == 409, replay.text
    again = httpx.post(
        f"{a.url}/api/v1/network/requests/{request_id}/reply",
        headers=shops["member"], json={"agree": True}, timeout=30,
    )  # fmt: skip
    assert again.status_code == 409, again.text


def test_an_answer_to_a_shop_that_is_down_is_retried_until_it_is_back(
    shops: dict[str, Any],
) -> None:
    """Runs last: it stops and restarts shop A (the hub too)."""
    a, b = shops["a"], shops["b"]
    design = _design(a, shops["member"], "Shelf pin", "CC-BY-4.0")
    request_id = _send(shops, design)
    a.stop()
    declined = b.api(
        "POST", f"/api/v1/network/requests/{request_id}/decline",
        json={"reason": "no PLA left this month"},
    )  # fmt: skip
    assert declined.status_code == 200, declined.text
    sent = declined.json()["messages"][-1]
    assert (sent["kind"], sent["delivery_state"]) == ("declined", "pending")
    assert "cannot reach" in sent["delivery"]
    operator = {"mf_session": b.headers["Authorization"].split()[1]}
    page = httpx.get(f"{b.url}/network/requests/{request_id}", cookies=operator)
    assert "Not delivered yet, retrying" in page.text
    # A comes back; B's scheduler tries again with backoff and A takes the answer. (That
    # the outbox outlives B's own restart is tested in process: test_requests_api.)
    a.start()
    a.wait_up()
    seen = poll(
        lambda: (r := _at_a(shops, request_id))["state"] == "declined" and r,
        90,
        "A, back, to get B's answer",
    )
    assert seen["messages"][-1]["payload"]["reason"] == "no PLA left this month"
    at_b = b.api("GET", f"/api/v1/network/requests/{request_id}").json()
    last = at_b["messages"][-1]
    assert last["delivery_state"] == "delivered", last
    assert last["delivery_attempts"] >= 2
    assert last["delivery"].startswith("HTTP 200")
