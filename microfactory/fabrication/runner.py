"""A bounded subprocess: no shell, a timeout, capped output, and the whole group killed.

OpenSCAD and PrusaSlicer take untrusted designs as input. A design can make either tool run
for hours, print without end, or write a file that fills the disk, so every run here is
bounded in time, in captured output and in the size of the file it writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from microfactory.errors import InvalidInputError
from microfactory.workers import set_parent_death_signal


@dataclass(frozen=True)
class Limits:
    """Bounds on one tool run."""

    timeout_s: float = 120.0
    max_output_bytes: int = 200 * 1024 * 1024  # the file the tool writes (STL, G-code)
    max_log_bytes: int = 64 * 1024  # captured stdout + stderr kept for the message


@dataclass(frozen=True)
class RunResult:
    """What a finished run left behind."""

    returncode: int
    stdout: str
    stderr: str
    duration_s: float
    truncated: bool


class ToolError(InvalidInputError):
    """A tool refused the input or failed; the message carries what the tool said (422)."""


class ToolTimeout(ToolError):
    """A tool ran past its time limit and was killed."""


class ToolMissing(ToolError):
    """The tool is not installed on this server."""

    status_code = 503


async def _drain(stream: asyncio.StreamReader | None, keep: int, sink: bytearray) -> bool:
    """Read a stream to its end, keeping the first `keep` bytes; return whether it overflowed."""
    overflow = False
    if stream is None:
        return overflow
    while chunk := await stream.read(65536):
        room = keep - len(sink)
        if room > 0:
            sink += chunk[:room]
        if len(chunk) > room:
            overflow = True  # keep reading, or the tool would block on a full pipe
    return overflow


def _kill_group(pid: int) -> None:
    # The tool may have children (PrusaSlicer's worker threads are threads, but OpenSCAD can
    # spawn helpers): kill the whole process group, not just the leader.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_bounded(
    argv: Sequence[str],
    *,
    limits: Limits,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    output_path: Path | None = None,
    tool: str | None = None,
) -> RunResult:
    """Run a program with an argument list (never a shell) within `limits`.

    Raises ToolTimeout when it runs too long or its `output_path` grows past the limit; the
    process group is killed either way. A non-zero exit is returned, not raised: the caller
    knows how to read its tool's messages.
    """
    name = tool or Path(argv[0]).name
    base_env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(cwd),  # the tools write their settings under HOME: keep it in the workdir
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": str(cwd),
    }
    base_env.update(env or {})
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(cwd),
            env=base_env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, so a kill reaches every child
            # Killed by the kernel if the server dies (even by SIGKILL): no orphaned renders.
            preexec_fn=set_parent_death_signal,
        )
    except FileNotFoundError:
        raise ToolMissing(f"{name} is not installed on this server", tool=name) from None
    out, err = bytearray(), bytearray()
    half = max(1, limits.max_log_bytes // 2)
    readers = asyncio.gather(_drain(proc.stdout, half, out), _drain(proc.stderr, half, err))
    waiter = asyncio.ensure_future(proc.wait())
    reason: str | None = None
    try:
        deadline = started + limits.timeout_s
        while not waiter.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = f"{name} ran longer than {limits.timeout_s:g} s and was stopped"
                break
            await asyncio.wait({waiter}, timeout=min(0.25, remaining))
            if output_path is not None and file_size(output_path) > limits.max_output_bytes:
                reason = (
                    f"{name} wrote more than {limits.max_output_bytes} bytes to "
                    f"{output_path.name} and was stopped"
                )
                break
    finally:
        if not waiter.done():
            _kill_group(proc.pid)
        await waiter
        try:
            # A child that outlived the tool could hold the pipes open: bound the wait.
            overflowed = await asyncio.wait_for(readers, timeout=5.0)
        except TimeoutError:
            _kill_group(proc.pid)
            overflowed = (True, True)
    duration = time.monotonic() - started
    if reason is not None:
        raise ToolTimeout(reason, tool=name, log=_scrub(_decode(out, err), cwd))
    if output_path is not None and file_size(output_path) > limits.max_output_bytes:
        raise ToolTimeout(
            f"{name} wrote more than {limits.max_output_bytes} bytes to {output_path.name}",
            tool=name,
        )
    assert proc.returncode is not None
    return RunResult(
        returncode=proc.returncode,
        stdout=_scrub(out.decode("utf-8", "replace"), cwd),
        stderr=_scrub(err.decode("utf-8", "replace"), cwd),
        duration_s=duration,
        truncated=any(overflowed),
    )


def file_size(path: Path) -> int:
    """Return a file's size in bytes, 0 when it does not exist."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _scrub(text: str, cwd: Path) -> str:
    # Tools name files by absolute path; the work directory is the server's business.
    for folder in {str(cwd), str(cwd.resolve())}:
        text = text.replace(folder + os.sep, "").replace(folder, ".")
    return text


def _decode(out: bytearray, err: bytearray) -> str:
    return (bytes(out) + bytes(err)).decode("utf-8", "replace")[-4000:]
