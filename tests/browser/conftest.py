"""A real server (`microfactory serve --demo`) and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import require_or_skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class DemoServer:
    """A `microfactory serve --demo` process on a free loopback port.

    It runs as `scripts/demo.sh` runs it: in its own folder, with the default *relative* data
    directory `data`, so the tools' working directories differ from the server's.
    """

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = workdir / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFACTORY_")}
        # The demo as shipped, but its simulated machines 15x faster than the demo default (20x)
        # and their serial link unmetered (the demo's is 115200 baud, ~11.5 kB/s, which took
        # most of the print's time): the design-flow test waits for a whole print to finish.
        env.update(
            MICROFACTORY_LOG_JSON="false",
            MICROFACTORY_DEMO_SPEED_FACTOR="300",
            MICROFACTORY_DEMO_BAUD="0",
        )
        self.log_path = workdir / "server.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "microfactory.cli", "serve", "--demo", "--port", str(self.port)],
            cwd=workdir,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start within 60 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    server = DemoServer(tmp_path_factory.mktemp("demo"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module.

    Module scope, not session: Playwright's sync API runs an event loop in this thread while
    it is open, and the async tests of later modules need the thread free of one.
    """
    require_or_skip(
        Path(CHROMIUM).exists() or shutil.which("chromium") is not None,
        "Debian's chromium is not installed (/usr/bin/chromium)",
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    yield pg
    context.close()


def login(page: Any, base: str, username: str, password: str) -> None:
    page.goto(base + "/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


ENDED = {"finished", "failed", "cancelled"}


def release_job(base: str, job_id: int) -> None:
    """End a test's job and clear its bed, so that the demo's printers are free again.

    The browser tests share one demo shop per worker: a job left printing, or ended on a
    printer whose bed nobody cleared, holds that printer, and the next test's job would
    wait for it forever.
    """
    resp = httpx.post(
        base + "/api/v1/auth/token",
        data={"username": "operator", "password": "operator-demo-pass"},
        timeout=10,
    )
    resp.raise_for_status()
    op = {"Authorization": f"Bearer {resp.json()['access_token']}"}
    httpx.post(f"{base}/api/v1/jobs/{job_id}/cancel", headers=op, timeout=30)  # may have ended
    deadline = time.monotonic() + 60
    while True:
        job = httpx.get(f"{base}/api/v1/jobs/{job_id}", headers=op, timeout=10).json()
        if job["state"] in ENDED or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert job["state"] in ENDED, job
    if job.get("machine_id") is not None and job.get("cleared_at") is None:
        cleared = httpx.post(
            f"{base}/api/v1/jobs/{job_id}/clear", json={"outcome": "bad"}, headers=op, timeout=10
        )
        assert cleared.status_code == 200, cleared.text


def delete_machine_named(base: str, name: str) -> None:
    """Remove a machine a test added to the shared demo shop, if it is still there."""
    token = httpx.post(
        base + "/api/v1/auth/token",
        data={"username": "admin", "password": "admin-demo-pass"},
        timeout=10,
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    for machine in httpx.get(base + "/api/v1/machines", headers=headers, timeout=10).json():
        if machine["name"] == name:
            httpx.delete(f"{base}/api/v1/machines/{machine['id']}", headers=headers, timeout=10)


def api_token(base: str, username: str, password: str) -> dict[str, str]:
    """Log in through the API; return the Authorization header for that user."""
    resp = httpx.post(
        base + "/api/v1/auth/token", data={"username": username, "password": password}, timeout=10
    )
    resp.raise_for_status()
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


def new_member(
    base: str, admin: dict[str, str], username: str, password: str
) -> tuple[int, dict[str, str]]:
    """Create a member through the API as an admin; return their id and Authorization header."""
    made = httpx.post(
        base + "/api/v1/users",
        json={"username": username, "password": password, "role": "member"},
        headers=admin,
        timeout=10,
    )
    assert made.status_code == 201, made.text
    return made.json()["id"], api_token(base, username, password)


# page.add_init_script(COUNT_EVENT_SOURCES) counts the streams a page opens in
# window.__eventSources: every page shares one (app.js's or the calendar's) with the badge.
COUNT_EVENT_SOURCES = """
window.__eventSources = 0;
const Native = window.EventSource;
window.EventSource = class extends Native {
  constructor(...args) { super(...args); window.__eventSources += 1; }
};
"""
