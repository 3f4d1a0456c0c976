"""Start a real OctoPrint server with its virtual printer, for integration tests.

The server runs from its own virtual environment (scripts/octoprint-venv.sh), binds
127.0.0.1 on a free port and keeps everything in a temporary base directory. Nothing in it
reaches for the network: every plugin that would is disabled.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
import yaml

REPO = Path(__file__).resolve().parents[2]

USERNAME = "mf-test"
PASSWORD = "mf-test-password"
APP_ID = "microfactory-tests"

# Bundled plugins that talk to the internet (or to the LAN by multicast). There is no
# network here, and their timeouts would only slow startup down.
NETWORKED_PLUGINS = [
    "tracking",
    "announcements",
    "pluginmanager",
    "softwareupdate",
    "errortracking",
    "discovery",
    "achievements",
    "health_check",
    "backup",
]

# The virtual printer, made fast: no idle `wait` chatter, no output throttle, and no
# injected resends (the defaults simulate errors on lines 100-115, which only cost time
# here; the serial drivers test resends against the same printer on a pty).
VIRTUAL_PRINTER = {
    "enabled": True,
    "okAfterResend": True,
    "sendWait": False,
    "waitInterval": 1.0,
    "throttle": 0.0,
    "simulated_errors": [],
    "sendBusy": False,
    "supportM112": True,
    "simulateReset": True,
    "capabilities": {"AUTOREPORT_TEMP": True, "AUTOREPORT_SD_STATUS": True},
}


def venv_path() -> Path:
    """Return where the OctoPrint virtual environment is expected."""
    return Path(os.environ.get("MICROFACTORY_OCTOPRINT_VENV") or REPO / ".octoprint-venv")


def octoprint_executable(venv: Path | None = None) -> Path | None:
    """Return the `octoprint` command inside the venv, or None when it is not installed."""
    exe = (venv or venv_path()) / "bin" / "octoprint"
    return exe if exe.exists() else None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(basedir: Path, port: int) -> None:
    """Write config.yaml: no wizard, no online checks, the virtual printer on."""
    config: dict[str, Any] = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "firstRun": False,
            # A killed server would otherwise come back in safe mode on its next start.
            "ignoreIncompleteStartup": True,
            "onlineCheck": {"enabled": False},
            "pluginBlacklist": {"enabled": False},
            "pythonEolCheck": {"enabled": False},
        },
        "plugins": {
            "_disabled": list(NETWORKED_PLUGINS),
            "virtual_printer": dict(VIRTUAL_PRINTER),
        },
        # Microfactory connects the printer itself; the server must not do it behind its back.
        "serial": {"autoconnect": False, "log": False},
    }
    (basedir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


def write_app_key(basedir: Path, username: str, api_key: str) -> None:
    """Register an application key as the appkeys plugin persists them.

    The format is the plugin's own (octoprint/plugins/appkeys/__init__.py, _save_keys):
    a mapping of user id to a list of {app_id, api_key}.
    """
    path = basedir / "data" / "appkeys" / "keys.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = {username: [{"app_id": APP_ID, "api_key": api_key}]}
    path.write_text(yaml.safe_dump(keys), encoding="utf-8")


@dataclass
class OctoPrintServer:
    """One OctoPrint server process and everything needed to talk to it."""

    executable: Path
    basedir: Path
    port: int = field(default_factory=free_port)
    api_key: str = field(default_factory=lambda: secrets.token_hex(16).upper())
    startup_timeout_s: float = 90.0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """Return the file the server's console output goes to."""
        return self.basedir / "serve.log"

    def prepare(self) -> None:
        """Create the base directory, the config, the user and its application key."""
        self.basedir.mkdir(parents=True, exist_ok=True)
        write_config(self.basedir, self.port)
        subprocess.run(
            [
                str(self.executable),
                "--basedir",
                str(self.basedir),
                "user",
                "add",
                "--password",
                PASSWORD,
                "--admin",
                USERNAME,
            ],
            check=True,
            capture_output=True,
            timeout=120,
            env=self._env(),
        )
        write_app_key(self.basedir, USERNAME, self.api_key)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Keep the server's Python away from the test venv's packages.
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        env["NO_COLOR"] = "1"
        return env

    def start(self) -> None:
        """Start serving and wait (bounded) until the API answers with our key."""
        if self.process is not None and self.process.poll() is None:
            return
        cmd = [
            str(self.executable),
            "--basedir",
            str(self.basedir),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--iknowwhatimdoing")
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
                start_new_session=True,  # so stop() can signal the whole group
            )
        finally:
            log.close()
        self.wait_ready()

    def wait_ready(self) -> None:
        """Wait until /api/version answers and the VIRTUAL port is offered."""
        deadline = time.monotonic() + self.startup_timeout_s
        headers = {"X-Api-Key": self.api_key}
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"OctoPrint exited with {self.process.returncode} while starting; "
                    f"see {self.log_path}:\n{self.log_tail()}"
                )
            try:
                r = requests.get(f"{self.url}/api/connection", headers=headers, timeout=2)
                if r.status_code == 200 and "VIRTUAL" in r.json()["options"]["ports"]:
                    return
                last_error = f"HTTP {r.status_code}: {r.text[:200]}"
            except requests.RequestException as exc:
                last_error = str(exc)
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"OctoPrint did not answer within {self.startup_timeout_s:.0f} s "
            f"({last_error}); see {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGKILL when kill is set, to simulate a crash)."""
        proc = self.process
        if proc is None:
            return
        self.process = None
        if proc.poll() is None:
            sig = signal.SIGKILL if kill else signal.SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def restart(self) -> None:
        """Start the server again on the same port and base directory."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        """Return the end of the server's console output, for failure messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- direct API access for tests (bypassing the driver under test) -------------

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the server's REST API with the test key."""
        headers = {"X-Api-Key": self.api_key, **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=10, **kwargs)


@contextlib.contextmanager
def running_octoprint(basedir: Path, venv: Path | None = None) -> Iterator[OctoPrintServer]:
    """Start an OctoPrint server in basedir and stop it on exit."""
    exe = octoprint_executable(venv)
    if exe is None:
        raise FileNotFoundError(f"no OctoPrint in {venv or venv_path()}")
    server = OctoPrintServer(executable=exe, basedir=basedir)
    server.prepare()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class SubPathProxy:
    """A tiny reverse proxy serving an upstream server under a sub-path, as nginx would.

    Requests to http://127.0.0.1:<port><prefix>/x go to <upstream>/x; anything outside the
    prefix answers 404. Every request path is recorded, so tests can check what was called.
    Clearing `available` makes it answer 502, as nginx does while its upstream is down.
    """

    def __init__(self, upstream: str, prefix: str = "/octoprint/") -> None:
        self.upstream = upstream.rstrip("/")
        self.prefix = "/" + prefix.strip("/") + "/"
        self.paths: list[str] = []
        self.available = True
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                proxy.paths.append(self.path)
                if not self.path.startswith(proxy.prefix):
                    self._reply(404, b"not found", "text/plain")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if not proxy.available:
                    self._reply(502, b"<html><h1>502 Bad Gateway</h1></html>", "text/html")
                    return
                skip = {"host", "content-length", "connection", "accept-encoding"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                target = proxy.upstream + "/" + self.path[len(proxy.prefix) :]
                try:
                    r = requests.request(
                        self.command, target, data=body, headers=headers, timeout=10
                    )
                except requests.RequestException:
                    self._reply(502, b"bad gateway", "text/plain")
                    return
                self._reply(r.status_code, r.content, r.headers.get("Content-Type"))

            def _reply(self, status: int, body: bytes, content_type: str | None) -> None:
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Return the proxied base URL, sub-path included."""
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def __enter__(self) -> SubPathProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
