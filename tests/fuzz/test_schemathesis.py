"""Fuzz the whole API with schemathesis, from the app's own OpenAPI document.

The server runs as it does in a shop (`microfactory serve --demo`, SQLite, real HTTP on the
loopback) with machines registered but not driven, and schemathesis sends generated requests
as a member and as an operator: boundary values, wrong types, huge ids, methods no route
serves, and sequences that follow the document's links. Any 5xx, undocumented status code or
content type, response that breaks its schema, `Allow` header that misses a method, or
schema-violating request that is accepted fails the test.

The live-status stream (Server-Sent Events, endless by design) is not fuzzed; its keep-alive
has its own test (tests/api/test_status_stream.py). One check is left out:
`positive_data_acceptance`, which expects every schema-valid request to succeed. Cross-field
rules (end after start, a driver's connection settings, a design's own parameters) cannot be
written in JSON Schema, so a 422 there is correct.

Bounded: at most EXAMPLES examples per operation and phase, deterministic generation (the
same cases on every run), and a wall-clock cap on the subprocess only as a safety net.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

EXAMPLES = 5
CHECKS_EXCLUDED = "positive_data_acceptance"
SERVE = [sys.executable, "-m", "microfactory.cli", "serve", "--demo"]
RUN_CAP_S = 400  # a safety net for a stuck server, not a speed assertion


def _st() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if found is None:
        pytest.fail("schemathesis is not installed: pip install -e '.[test]'")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """`microfactory serve --demo` in a subprocess, with its log kept for the report."""

    def __init__(self, data_dir: Path) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "server.log"
        self.workdir = data_dir
        self.env = {
            **os.environ,
            "MICROFACTORY_DATA_DIR": str(data_dir / "data"),
            "MICROFACTORY_RUN_SUPERVISORS": "false",
            "MICROFACTORY_AUTO_DISPATCH": "false",
            "MICROFACTORY_LOG_JSON": "false",
            "MICROFACTORY_ENVIRONMENT": "development",
        }
        self.env.pop("MICROFACTORY_DATABASE_URL", None)
        self.env.pop("MICROFACTORY_CONFIG", None)
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "microfactory.cli", *args],
            env=self.env,
            capture_output=True,
            check=True,
            timeout=60,
        )
        return out.stdout.decode().strip()

    def start(self) -> None:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*SERVE, "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"the server did not start within 60 s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("fuzz"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize("role", ["member", "operator"])
def test_api_has_no_server_errors_and_matches_its_schema(server: Server, role: str) -> None:
    # The demo shop's logins; the token is made the way an operator would (the CLI).
    token = server.cli("token", "create", "--username", role).splitlines()[-1]
    cmd = [
        _st(),
        "run",
        f"{server.base}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "all",
        "--exclude-checks",
        CHECKS_EXCLUDED,
        "--max-examples",
        str(EXAMPLES),
        "--generation-deterministic",
        "--continue-on-failure",
        "--no-color",
        # One worker: Hypothesis describes strategies with ast.parse, which CPython 3.11.7
        # does not allow in two threads at once ("AST constructor recursion depth mismatch").
        "--workers",
        "1",
        "--request-timeout",
        "30",
        # /users* are the admin's: a member and an operator get 403 there, as they should.
        "--warnings",
        "off",
        # Server-Sent Events never end: each call would wait out the request timeout.
        "--exclude-path",
        "/api/v1/machines/stream",
    ]
    try:
        # Schemathesis keeps a cache of found examples in its working directory: not the repo.
        run = subprocess.run(
            cmd, capture_output=True, timeout=RUN_CAP_S, check=False, cwd=server.workdir
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"schemathesis ran over {RUN_CAP_S} s:\n{(exc.stdout or b'').decode()[-4000:]}")
    output = run.stdout.decode(errors="replace") + run.stderr.decode(errors="replace")
    log = server.log()
    crashes = log.count("Exception in ASGI application")
    assert crashes == 0, f"{crashes} server errors as {role}:\n{_tracebacks(log)}"
    assert run.returncode == 0, f"schemathesis found problems as {role}:\n{output[-15000:]}"
    assert "Test cases:" in output, output[-4000:]


def _tracebacks(log: str, limit: int = 8000) -> str:
    parts = log.split("Exception in ASGI application")
    return "\n---\n".join(p[:1500] for p in parts[1:6])[:limit]
