"""The disk fills up during an upload: a clear 507 with a message, and no partial file left.

Two real ways to run out of space, without privileges:
- the whole server in a private mount namespace (`unshare --user --map-root-user --mount`)
  whose upload folder is a 2 MiB tmpfs: the kernel answers ENOSPC mid-upload;
- a file size limit (RLIMIT_FSIZE) in this process: the kernel answers EFBIG (Python ignores
  SIGXFSZ), which is how a quota or a full filesystem looks to the storing code too.
"""

from __future__ import annotations

import asyncio
import io
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.datastructures import UploadFile

from microfactory.designs.storage import write_stream
from microfactory.errors import InsufficientStorageError
from microfactory.files import store_upload
from tests.security.test_security_orphans import _cli, _free_port

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux limits")

MIB = 1024 * 1024


def _program(size: int) -> bytes:
    line = b"G1 X10.000 Y10.000 E0.05000 F1200\n"
    return b"G28\n" + line * (size // len(line))


class _FileSizeLimit:
    """RLIMIT_FSIZE for this process, restored afterwards."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.saved = resource.getrlimit(resource.RLIMIT_FSIZE)

    def __enter__(self) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.saved[1]))

    def __exit__(self, *exc: object) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, self.saved)


async def test_a_job_upload_past_a_file_size_limit_leaves_nothing(tmp_path: Path) -> None:
    upload = UploadFile(io.BytesIO(_program(3 * MIB)), filename="big.gcode")
    with _FileSizeLimit(MIB), pytest.raises(InsufficientStorageError) as refused:
        await store_upload(upload, tmp_path, 200 * MIB, ".gcode")
    assert refused.value.status_code == 507
    assert "storage is full" in refused.value.detail
    assert list(tmp_path.iterdir()) == []


async def test_a_design_file_past_a_file_size_limit_leaves_nothing(tmp_path: Path) -> None:
    def copy() -> Any:
        return write_stream(
            io.BytesIO(_program(3 * MIB)), tmp_path, name="part.gcode", limit=200 * MIB,
            budget=[1 << 40],
        )  # fmt: skip

    with _FileSizeLimit(MIB), pytest.raises(InsufficientStorageError):
        await asyncio.to_thread(copy)
    assert list(tmp_path.iterdir()) == []


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


@pytest.fixture
def full_disk_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    """A server whose upload folder is a 2 MiB tmpfs; yields its URL, auth and that folder
    as this process sees it (through /proc/<pid>/root)."""
    if not _namespaces_work():
        pytest.skip("unprivileged user and mount namespaces are not available here")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFACTORY_")}
    data = tmp_path / "data"
    env.update(
        MICROFACTORY_DATA_DIR=str(data), MICROFACTORY_LOG_JSON="false",
        MICROFACTORY_AUTO_DISPATCH="false",
    )  # fmt: skip

    def cli(*args: str, stdin: bytes = b"") -> str:
        return subprocess.run(
            [*_cli(), *args], input=stdin, env=env, capture_output=True, timeout=120, check=True
        ).stdout.decode()

    cli("db", "upgrade")
    cli(
        "user", "create", "--username", "olga", "--role", "operator", "--password-stdin",
        stdin=b"olga-pass-12\n",
    )  # fmt: skip
    token = cli("token", "create", "--username", "olga").strip().splitlines()[-1]
    files = data / "files"
    files.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    serve = " ".join([*_cli(), "serve", "--port", str(port)])
    script = f'mount -t tmpfs -o size=2m tmpfs "{files}" && exec {serve}'
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        seen = Path(f"/proc/{proc.pid}/root") / str(files).lstrip("/")
        yield base, {"Authorization": f"Bearer {token}"}, seen
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_uploads_onto_a_full_disk_get_507_and_leave_no_partial_file(
    full_disk_server: tuple[str, dict[str, str], Path],
) -> None:
    base, headers, files = full_disk_server
    assert list(files.iterdir()) == []  # the server's own view of its tmpfs
    big = _program(3 * MIB)
    job = httpx.post(
        f"{base}/api/v1/jobs",
        files={"file": ("big.gcode", big, "text/plain")},
        data={"machine_kind": "fdm_printer"},
        headers=headers,
        timeout=60,
    )
    assert job.status_code == 507, job.text
    assert "storage is full" in job.json()["detail"]
    assert list(files.iterdir()) == []
    design = httpx.post(
        f"{base}/api/v1/designs",
        files=[("files", ("big.gcode", big, "text/plain"))],
        data={"title": "Big", "licence": "CC0-1.0"},
        headers=headers,
        timeout=60,
    )
    assert design.status_code == 507, design.text
    assert "storage is full" in design.json()["detail"]
    assert list(files.iterdir()) == []
    # The space was given back: an upload that fits is taken.
    small = httpx.post(
        f"{base}/api/v1/designs",
        files=[("files", ("small.gcode", _program(MIB // 2), "text/plain"))],
        data={"title": "Small", "licence": "CC0-1.0"},
        headers=headers,
        timeout=60,
    )
    assert small.status_code == 201, small.text
    assert len(list(files.iterdir())) == 1
