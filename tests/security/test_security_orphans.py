"""Child processes die with the server, even when it is killed with SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

GCODE = b"; a tiny print\nG28\nG1 X10 Y10 F3000\nG1 X20 Y20 E1 F1200\nM104 S0\n"


def _stat(pid: int) -> tuple[str, int] | None:
    """Return a process's state letter and parent pid, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def descendants(root: int) -> set[int]:
    """Return the pids of every living descendant of `root`."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None and st[0] != "Z":
            parents[int(entry)] = st[1]
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Return whether a process exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def wait_until_gone(pids: set[int], bound_s: float = 30.0) -> set[int]:
    """Poll until none of `pids` is alive, for at most `bound_s`; return the survivors."""
    deadline = time.monotonic() + bound_s
    while (left := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli() -> list[str]:
    return [sys.executable, "-m", "microfactory.cli"]


@pytest.fixture
def server_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFACTORY_")}
    env.update(
        MICROFACTORY_DATA_DIR=str(tmp_path / "data"),
        MICROFACTORY_LOG_JSON="false",
        MICROFACTORY_AUTO_DISPATCH="false",
    )
    return env


@pytest.fixture
def server(server_env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    """A real `microfactory serve` process, with a member's token."""
    subprocess.run(
        [*_cli(), "db", "upgrade"], env=server_env, check=True, capture_output=True, timeout=120
    )
    subprocess.run(
        [*_cli(), "user", "create", "--username", "maria", "--role", "member",
         "--password-stdin"],
        input=b"maria-pass-1\n", env=server_env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    token = subprocess.run(
        [*_cli(), "token", "create", "--username", "maria"],
        env=server_env, check=True, capture_output=True, timeout=60,
    ).stdout.decode().strip().splitlines()[-1]  # fmt: skip
    port = _free_port()
    proc = subprocess.Popen(
        [*_cli(), "serve", "--port", str(port)],
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "the server exited on start"
            assert time.monotonic() < deadline, "the server did not start within 60 s"
            time.sleep(0.2)
        yield proc, base, token
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_analysis_worker_and_resource_tracker_die_after_the_server_is_killed(
    server: tuple[subprocess.Popen[bytes], str, str],
) -> None:
    proc, base, token = server
    # A G-code design file is analysed in the process pool: that starts the worker.
    resp = httpx.post(
        f"{base}/api/v1/designs",
        headers={"Authorization": f"Bearer {token}"},
        files={"files": ("part.gcode", GCODE, "text/x-gcode")},
        data={"title": "Part", "licence": "CC0-1.0"},
        timeout=60,
    )
    assert resp.status_code == 201, resp.text
    children = descendants(proc.pid)
    cmdlines = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children}
    assert any(b"resource_tracker" in c for c in cmdlines.values()), cmdlines
    assert any(b"spawn_main" in c for c in cmdlines.values()), cmdlines
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    survivors = wait_until_gone(children)
    assert not survivors, {p: cmdlines[p] for p in survivors}


def test_a_tool_started_by_the_server_dies_with_it(tmp_path: Path) -> None:
    """run_bounded's tools (OpenSCAD, PrusaSlicer) get the parent-death signal."""
    sleeper = shutil.which("sleep")
    assert sleeper
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from microfactory.fabrication.runner import Limits, run_bounded

        async def main():
            task = asyncio.ensure_future(
                run_bounded(
                    [{sleeper!r}, "1000"], limits=Limits(timeout_s=600), cwd=Path({str(tmp_path)!r})
                )
            )
            await asyncio.sleep(0.5)
            print("started", flush=True)
            await task

        asyncio.run(main())
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == b"started"
        children = descendants(parent.pid)
        assert children, "the tool did not start"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        assert not wait_until_gone(children)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
