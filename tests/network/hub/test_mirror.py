"""Two hubs as real `microfactory serve` processes: the second mirrors the first, re-verifying.

Each has its own SQLite database. The first holds a good report and one whose stored bytes
were changed after it was taken (as a compromised or broken hub might serve it); the second
pulls both through `GET /api/v1/network/reports`, stores the good one exactly as received and
refuses the changed one, counting the refusal.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.network.hub.conftest import JOSE, Shop, tamper
from tests.peers.microfactory_server import MicrofactoryServer

pytestmark = pytest.mark.slow


class Hub(MicrofactoryServer):
    """A `microfactory serve` hub on a free loopback port, in its own folder."""

    def __init__(self, workdir: Path, **env_extra: str) -> None:
        super().__init__(
            workdir, workdir.name, MICROFACTORY_HUB="true", MICROFACTORY_HUB_OPEN="true",
            MICROFACTORY_NETWORK_PUBLISH="true", **env_extra,
        )  # fmt: skip
        self.start()
        self.wait_up()

    def log_text(self) -> str:
        return self.log()


@pytest.fixture
def first_hub(tmp_path: Path) -> Iterator[Hub]:
    hub = Hub(tmp_path / "hub1")
    yield hub
    hub.stop()


def test_a_second_hub_mirrors_the_first_and_refuses_a_changed_report(
    first_hub: Hub, tmp_path: Path
) -> None:
    good, victim = Shop("Good shop"), Shop("Victim shop", lat=50.85, lon=4.35)
    good_jws = good.jws()
    for token in (good_jws, victim.jws()):
        resp = httpx.post(f"{first_hub.url}/api/v1/network/reports", content=token, headers=JOSE)
        assert resp.status_code == 202, resp.text

    # The first hub's stored copy of the victim's report is changed after it was taken.
    def closer(data: dict[str, Any]) -> None:
        data["okw"]["name"] = "Victim shop (now with no queue)"

    with sqlite3.connect(first_hub.db) as conn:
        (stored,) = conn.execute(
            "SELECT jws FROM hub_reports WHERE shop_id = ?", (victim.shop_id,)
        ).fetchone()
        conn.execute(
            "UPDATE hub_reports SET jws = ? WHERE shop_id = ?",
            (tamper(stored, closer), victim.shop_id),
        )
    served = httpx.get(f"{first_hub.url}/api/v1/network/shops").json()["shops"]
    assert len(served) == 2  # the first hub itself still lists both

    second = Hub(tmp_path / "hub2", MICROFACTORY_HUB_UPSTREAMS=first_hub.url)
    try:
        deadline = time.monotonic() + 90  # the scheduler pulls at start, then every 30 s
        shops: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            shops = httpx.get(f"{second.url}/api/v1/network/shops").json()["shops"]
            if shops:
                break
            time.sleep(0.5)
        assert [s["name"] for s in shops] == ["Good shop"], second.log_text()
        mirrored = httpx.get(f"{second.url}/api/v1/network/reports").json()["reports"]
        assert [r["jws"] for r in mirrored] == [good_jws]  # stored as received
        with sqlite3.connect(second.db) as conn:
            row = conn.execute(
                "SELECT stored, refused, last_refusal, last_error FROM hub_upstreams"
            ).fetchone()
        stored_n, refused_n, last_refusal, last_error = row
        assert (stored_n, refused_n, last_error) == (1, 1, None)
        assert "401" in last_refusal
        assert "signature" in last_refusal
    finally:
        second.stop()
