"""The network on the loopback: two hubs and three shops as separate `microfactory serve`
processes, each with its own SQLite database, talking only HTTP and signed reports.

The shops are set up as their admins would (profile, machines, a week of bookings) through
the API; they push their signed capacity reports to the first hub by themselves; the second
hub mirrors the first and verifies every report itself; routing picks the right shop for a
laser job, refuses a printer too small, and moves a fully booked shop down with its reason.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.peers.microfactory_server import MicrofactoryServer, poll

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

JOSE = {"Content-Type": "application/jose"}
GENT = (51.054, 3.717)
BRUSSELS = (50.847, 4.357)
ANTWERP = (51.219, 4.402)


class Instance(MicrofactoryServer):
    """One shop or hub: migrated, with an admin and their token, then serving."""

    def __init__(self, root: Path, name: str, **env: str) -> None:
        env = {"MICROFACTORY_AUTO_DISPATCH": "false", "MICROFACTORY_NETWORK_PUBLISH": "true", **env}
        super().__init__(root / name, name, **env)
        self.headers = {"Authorization": f"Bearer {self.admin_token(migrate=True)}"}
        self.start()

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", headers=self.headers, timeout=15, **kw)


def _machine(shop: Instance, **body: Any) -> dict[str, Any]:
    resp = shop.api("POST", "/api/v1/machines", json={"driver": "manual", **body})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def _profile(shop: Instance, name: str, city: str, where: tuple[float, float]) -> str:
    body = {
        "name": name, "url": shop.url, "city": city, "country": "BE", "lat": where[0],
        "lon": where[1], "accessType": "Public", "contact": f"hello@{city.lower()}.example",
        "description": f"The makerspace of {city}",
    }  # fmt: skip
    resp = shop.api("PUT", "/api/v1/network/profile", json=body)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["shop_id"])


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("network")
    started: list[Instance] = []
    try:
        hub = Instance(root, "hub", MICROFACTORY_HUB="true", MICROFACTORY_HUB_OPEN="true")
        started.append(hub)
        shops = {}
        for name in ("a", "b", "c"):
            shop = Instance(root, name, MICROFACTORY_NETWORK_HUBS=hub.url)
            started.append(shop)
            shops[name] = shop
        for inst in started:
            inst.wait_up()
        ids = {
            "a": _profile(shops["a"], "Fablab Gent", "Gent", GENT),
            "b": _profile(shops["b"], "Brussels Makers", "Brussels", BRUSSELS),
            "c": _profile(shops["c"], "Antwerp Factory", "Antwerp", ANTWERP),
        }
        # A: one small printer. B: a printer and a laser. C: a large printer.
        _machine(
            shops["a"],
            name="Mini",
            kind="fdm_printer",
            build_volume_mm={"x": 120, "y": 120, "z": 120},
            capabilities={"materials": ["PLA", "PETG"], "nozzle_diameter_mm": 0.4},
        )
        b_printer = _machine(
            shops["b"],
            name="MK4",
            kind="fdm_printer",
            build_volume_mm={"x": 250, "y": 210, "z": 220},
            capabilities={"materials": ["PLA", "PETG"]},
        )
        _machine(
            shops["b"],
            name="Laser",
            kind="laser_cutter",
            build_volume_mm={"x": 600, "y": 400, "z": 10},
            capabilities={"materials": ["plywood", "acrylic"], "laser_power_w": 40},
        )
        _machine(
            shops["c"],
            name="Big printer",
            kind="fdm_printer",
            build_volume_mm={"x": 300, "y": 300, "z": 300},
            capabilities={"materials": ["PETG"]},
        )
        yield {"hub": hub, "shops": shops, "ids": ids, "b_printer": b_printer, "root": root}
    finally:
        for inst in started:
            inst.stop()


def _listed(hub: Instance) -> dict[str, dict[str, Any]]:
    resp = httpx.get(f"{hub.url}/api/v1/network/shops", timeout=10)
    assert resp.status_code == 200, resp.text
    return {s["shop_id"]: s for s in resp.json()["shops"]}


def _wait_for_reports(hub: Instance, ids: dict[str, str], test: Callable[[dict], bool]) -> None:
    def ready() -> bool:
        listed = _listed(hub)
        return all(i in listed and test(listed[i]) for i in ids.values())

    poll(ready, 90, f"the shops' reports on {hub.name}")


def _route(hub: Instance, **body: Any) -> dict[str, Any]:
    resp = httpx.post(f"{hub.url}/api/v1/network/route", json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_shops_push_and_the_hub_lists_them_with_what_they_make(network: dict[str, Any]) -> None:
    hub, ids = network["hub"], network["ids"]
    _wait_for_reports(hub, ids, lambda s: bool(s["processes"]))
    listed = _listed(hub)
    assert listed[ids["a"]]["name"] == "Fablab Gent"
    assert set(listed[ids["b"]]["processes"]) == {"fdm_printing", "laser_cutting"}
    assert listed[ids["c"]]["processes"] == ["fdm_printing"]
    assert not any(s["expired"] for s in listed.values())


def test_routing_picks_the_shop_that_can_make_it(network: dict[str, Any]) -> None:
    hub, ids = network["hub"], network["ids"]
    _wait_for_reports(hub, ids, lambda s: bool(s["processes"]))
    near_b = {"lat": BRUSSELS[0], "lon": BRUSSELS[1]}
    laser = _route(hub, process="laser_cutting", material="plywood",
                   size_mm={"x": 300, "y": 200, "z": 4}, quantity=2, near=near_b,
                   radius_km=100)  # fmt: skip
    assert [s["shop_id"] for s in laser["shops"]] == [ids["b"]]
    assert laser["shops"][0]["reason"]
    assert laser["shops"][0]["distance_km"] < 1
    # A 200 mm part does not fit Gent's 120 mm printer: it goes to Brussels or Antwerp.
    big = _route(hub, process="fdm_printing", material="PETG",
                 size_mm={"x": 200, "y": 150, "z": 100}, quantity=1,
                 near={"lat": GENT[0], "lon": GENT[1]}, radius_km=150)  # fmt: skip
    assert ids["a"] not in [s["shop_id"] for s in big["shops"]]
    assert {s["shop_id"] for s in big["shops"]} == {ids["b"], ids["c"]}
    excluded = {e["shop_id"]: e["reason"] for e in big["excluded"]}
    assert "large" in excluded[ids["a"]]


def test_a_full_week_of_bookings_moves_a_shop_down_with_that_reason(
    network: dict[str, Any],
) -> None:
    hub, ids, shops = network["hub"], network["ids"], network["shops"]
    _wait_for_reports(hub, ids, lambda s: bool(s["processes"]))
    before = _listed(hub)[ids["b"]]["sequence"]
    now = dt.datetime.now(dt.UTC)
    start = now.replace(minute=now.minute // 15 * 15, second=0, microsecond=0) + dt.timedelta(
        minutes=15
    )  # the next quarter hour: bookings sit on the machine's 15-minute grid
    booking = shops["b"].api(
        "POST", "/api/v1/bookings",
        json={"machine_id": network["b_printer"]["id"], "start": start.isoformat(),
              "end": (start + dt.timedelta(days=8)).isoformat(), "note": "a week-long run"},
    )  # fmt: skip
    assert booking.status_code == 201, booking.text
    # B pushes the change by itself.
    poll(lambda: _listed(hub)[ids["b"]]["sequence"] > before, 60, "B's next report")
    deadline = (dt.datetime.now(dt.UTC) + dt.timedelta(days=4)).isoformat()
    answer = _route(hub, process="fdm_printing", material="PETG",
                    size_mm={"x": 100, "y": 100, "z": 50}, quantity=1, deadline=deadline,
                    near={"lat": BRUSSELS[0], "lon": BRUSSELS[1]}, radius_km=150)  # fmt: skip
    ranked = [s["shop_id"] for s in answer["shops"]]
    assert ranked[0] != ids["b"]
    excluded = {e["shop_id"]: e["reason"] for e in answer["excluded"]}
    assert ids["b"] in excluded or ranked.index(ids["b"]) > 0
    if ids["b"] in excluded:
        assert "free hours" in excluded[ids["b"]] or "deadline" in excluded[ids["b"]]


def _flip_payload_byte(token: str) -> str:
    header, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raw[len(raw) // 2] ^= 0x01
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def test_the_hub_refuses_forged_and_replayed_reports(network: dict[str, Any]) -> None:
    hub, ids, shops = network["hub"], network["ids"], network["shops"]
    _wait_for_reports(hub, ids, lambda s: bool(s["processes"]))
    token = shops["a"].api("GET", "/api/v1/network/capacity?format=jws").text
    first = httpx.post(f"{hub.url}/api/v1/network/reports", content=token, headers=JOSE)
    assert first.status_code in (202, 409), first.text  # A may have pushed this one itself
    replay = httpx.post(f"{hub.url}/api/v1/network/reports", content=token, headers=JOSE)
    assert replay.status_code == 409, replay.text
    forged = httpx.post(
        f"{hub.url}/api/v1/network/reports", content=_flip_payload_byte(token), headers=JOSE
    )
    assert forged.status_code in (400, 401), forged.text
    assert forged.json()["detail"]


def test_a_second_hub_mirrors_the_first_and_verifies_every_report(
    network: dict[str, Any],
) -> None:
    hub, ids = network["hub"], network["ids"]
    _wait_for_reports(hub, ids, lambda s: bool(s["processes"]))
    mirror = Instance(
        network["root"], "mirror", MICROFACTORY_HUB="true", MICROFACTORY_HUB_OPEN="true",
        MICROFACTORY_HUB_UPSTREAMS=hub.url,
    )  # fmt: skip
    try:
        mirror.wait_up()
        _wait_for_reports(mirror, ids, lambda s: bool(s["processes"]))
        theirs = {s: r["name"] for s, r in _listed(hub).items()}
        ours = {s: r["name"] for s, r in _listed(mirror).items()}
        assert ours == theirs
        # The mirror stores what it received, byte for byte: the shops' signatures travel.
        upstream = httpx.get(f"{hub.url}/api/v1/network/reports").json()["reports"]
        mirrored = httpx.get(f"{mirror.url}/api/v1/network/reports").json()["reports"]
        assert {r["jws"] for r in mirrored} <= {r["jws"] for r in upstream}
    finally:
        mirror.stop()
