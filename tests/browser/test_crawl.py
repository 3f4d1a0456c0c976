"""Every page each role can reach from the home page loads, with no JavaScript error.

Logged in as the demo member, operator and admin, the crawl follows every same-origin link
(`<a href>`) breadth-first from `/`, and fails on any response of 400 or more (the page, or
anything it loads) and on any console error or uncaught page error. Forms (POSTs) and logout
are not followed. It is bounded: at most `PER_PATTERN` URLs of one shape (`/jobs/#`,
`/bookings?week=`) and `MAX_PAGES` per role, so calendars' "next week" links end. Every
failure is listed in one assertion message, with the page that linked to it.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any
from urllib.parse import parse_qsl, urldefrag, urlsplit

import httpx
import pytest
from playwright.sync_api import Error as PlaywrightError

from tests.browser.conftest import DemoServer, login, release_job

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]

ROLES = (
    ("member", "member-demo-pass"),
    ("operator", "operator-demo-pass"),
    ("admin", "admin-demo-pass"),
)
MAX_PAGES = 120  # per role
PER_PATTERN = 1  # URLs of one shape: /jobs/1, then no other job page
# Not followed: logging out ends the crawl's session; an event stream never ends.
SKIP = re.compile(r"^/(logout|login)(/|$)|/stream(/|$)")


def shape(url: str) -> str:
    """Return a URL's shape: numbers and hashes in the path as #, the query's keys only."""
    parts = urlsplit(url)
    path = re.sub(r"/(\d+|[0-9a-f]{16,})(?=/|$)", "/#", parts.path)
    keys = sorted({k for k, _ in parse_qsl(parts.query, keep_blank_values=True)})
    return path + ("?" + "&".join(keys) if keys else "")


def crawl(browser: Any, base: str, username: str, password: str) -> tuple[list[str], int]:
    """Visit every page the user can reach; return the failures and how many pages."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    failures: list[str] = []
    current = {"url": "(login)"}

    def fail(what: str) -> None:
        failures.append(f"{username}: {current['url']}: {what}")

    page.on("console", lambda msg: msg.type == "error" and fail(f"console error: {msg.text}"))
    page.on("pageerror", lambda exc: fail(f"page error: {exc}"))

    def on_response(resp: Any) -> None:
        if resp.url.startswith(base) and resp.status >= 400:
            fail(f"{resp.request.method} {resp.url.removeprefix(base)} answered {resp.status}")

    page.on("response", on_response)

    def log_in() -> None:
        login(page, base, username, password)
        page.wait_for_url(lambda url: urlsplit(url).path != "/login")

    log_in()
    seen = {base + "/"}
    shapes: dict[str, int] = {}
    queue: deque[tuple[str, str]] = deque([(base + "/", "(start)")])
    visited = 0
    while queue and visited < MAX_PAGES:
        url, source = queue.popleft()
        path = url.removeprefix(base)
        current["url"] = f"{path} (linked from {source})"
        visited += 1
        try:
            response = page.goto(url, wait_until="load")
        except PlaywrightError as exc:
            if "Download is starting" not in str(exc):
                fail(f"could not load: {exc}")
                continue
            # A file (CSV, iCalendar, G-code): its status, through the same session.
            download = context.request.get(url)
            if download.status >= 400:
                fail(f"GET answered {download.status}")
            continue
        if response is None:
            continue  # the same document (a fragment)
        if response.status >= 400:
            continue  # reported by the response listener
        if urlsplit(page.url).path == "/login":
            fail("sent back to the login page: the link ended the session")
            log_in()
            continue
        if "text/html" not in (response.header_value("content-type") or ""):
            continue
        hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        for href in hrefs:
            target, _ = urldefrag(str(href))
            if not target.startswith(base + "/") or target in seen:
                continue
            target_path = target.removeprefix(base)
            if SKIP.search(urlsplit(target_path).path):
                continue
            kind = shape(target_path)
            if shapes.get(kind, 0) >= PER_PATTERN:
                continue
            shapes[kind] = shapes.get(kind, 0) + 1
            seen.add(target)
            queue.append((target, path))
    context.close()
    return failures, visited


def test_every_page_each_role_reaches_loads_without_errors(
    browser: Any, demo_server: DemoServer
) -> None:
    # A job of the member's, so the job pages are crawled too. Pinned to the manual printer,
    # it waits in the queue and holds none of the demo printers other tests print on.
    base = demo_server.url
    token = httpx.post(
        base + "/api/v1/auth/token",
        data={"username": "member", "password": "member-demo-pass"},
        timeout=10,
    ).json()["access_token"]
    member = {"Authorization": f"Bearer {token}"}
    machines = httpx.get(base + "/api/v1/machines", headers=member, timeout=10).json()
    manual = next(m for m in machines if m["driver"] == "manual" and m["kind"] == "fdm_printer")
    job = httpx.post(
        base + "/api/v1/jobs",
        files={"file": ("crawl.gcode", b"G28\nG1 X5 Y5 F3000\n", "text/plain")},
        data={"title": "Crawl part", "machine_id": str(manual["id"])},
        headers=member,
        timeout=10,
    )
    assert job.status_code == 201, job.text

    failures: list[str] = []
    counts = {}
    for username, password in ROLES:
        found, visited = crawl(browser, demo_server.url, username, password)
        failures.extend(found)
        counts[username] = visited
    release_job(base, job.json()["id"])
    # The crawl reached the dashboard, not only the home page's redirect.
    assert all(n >= 8 for n in counts.values()), counts
    assert not failures, f"{len(failures)} failure(s) crawling {counts}:\n" + "\n".join(failures)
