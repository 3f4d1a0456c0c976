"""A real `microfactory serve` process for tests: its own folder, environment and database.

Used where a test needs other shops or hubs on the loopback (the network, remote imports):
the process is the server as a shop runs it, reached only over HTTP.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

# Runs several `microfactory` commands in one Python process (each is `main(argv)` with its
# own standard input and output, as in its own process), stopping at the first that fails.
# Each new process costs an interpreter and the imports (~1 s on a loaded machine).
_CLI_BATCH = """
import contextlib, io, json, sys
from microfactory.cli import main
results = []
for argv, stdin in json.loads(sys.argv[1]):
    sys.stdin = io.StringIO(stdin)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    results.append([code, out.getvalue(), err.getvalue()])
    if code != 0:
        break
sys.__stdout__.write(json.dumps(results))
"""


def run_cli_batch(
    commands: Sequence[tuple[list[str], str]], env: dict[str, str], cwd: Path | None = None
) -> list[str]:
    """Run `microfactory` commands (argv, stdin) in one process; return each one's output.

    Every command must succeed, as `subprocess.run(..., check=True)` of each would.
    """
    done = subprocess.run(
        [sys.executable, "-c", _CLI_BATCH, json.dumps([list(c) for c in commands])],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    for (argv, _), (code, _, err) in zip(commands, results, strict=False):
        assert code == 0, f"microfactory {' '.join(argv)} exited with {code}: {err}"
    assert len(results) == len(commands)
    return [out for _, out, _ in results]


def user_commands(
    username: str, role: str = "admin", password: str | None = None
) -> list[tuple[list[str], str]]:
    """The commands creating a user and a personal token for them (for `run_cli_batch`)."""
    password = password or f"{username}-password-1"
    return [
        (["user", "create", "--username", username, "--role", role, "--password-stdin"],
         f"{password}\n"),
        (["token", "create", "--username", username], ""),
    ]  # fmt: skip


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(check: Callable[[], Any], within: float, what: str) -> Any:
    """Poll until check() is truthy (the bound is a safety net, not a measurement)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


class MicrofactoryServer:
    """`microfactory serve` in `workdir`, with `MICROFACTORY_*` taken only from `env`.

    The data directory (and so the SQLite database) is `workdir/data`. `cli()` runs other
    commands (`db upgrade`, `user create`, ...) against the same settings.
    """

    def __init__(self, workdir: Path, name: str = "server", **env: str) -> None:
        self.name = name
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = self.dir / "data" / "microfactory.sqlite3"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFACTORY_")}
        self.env |= {
            "MICROFACTORY_DATA_DIR": str(self.dir / "data"),
            "MICROFACTORY_LOG_JSON": "false",
            **env,
        }
        self.log_path = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, stdin: str = "") -> str:
        """Run a `microfactory` command with this server's settings; return its output."""
        done = subprocess.run(
            [sys.executable, "-m", "microfactory.cli", *args], input=stdin, env=self.env,
            cwd=self.dir, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def cli_batch(self, *commands: tuple[list[str], str]) -> list[str]:
        """Run several commands (argv, stdin) in one process, as `cli()` would one by one."""
        return run_cli_batch(commands, env=self.env, cwd=self.dir)

    def admin_token(
        self, username: str = "admin", role: str = "admin", *, migrate: bool = False
    ) -> str:
        """Create a user (after migrating, or migrate first) and return a personal token."""
        commands = user_commands(username, role)
        if migrate:
            commands.insert(0, (["db", "upgrade"], ""))
        return self.cli_batch(*commands)[-1].strip().splitlines()[-1]

    def start(self) -> None:
        """Start serving (migrating the database first, as `serve` does)."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "microfactory.cli", "serve", "--host", "127.0.0.1",
             "--port", str(self.port)],
            cwd=self.dir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()

    def wait_up(self, within: float = 60) -> None:
        """Wait until /healthz answers; fail with the log if the process died."""

        def up() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.log()}"
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        poll(up, within, f"{self.name} to serve")

    def log(self) -> str:
        """The end of the server's log."""
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 15 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
