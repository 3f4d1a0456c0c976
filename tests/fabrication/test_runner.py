"""The bounded subprocess runner: timeouts kill the whole group, output is capped."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from microfactory.fabrication.runner import Limits, ToolError, ToolTimeout, run_bounded


def _gone(pid: int, wait_s: float = 3.0) -> bool:
    """Return whether a process ended (a zombie awaiting its reaper counts as ended)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


async def test_exit_status_and_output_are_returned(tmp_path: Path) -> None:
    result = await run_bounded(
        ["sh", "-c", "echo out; echo err >&2; exit 3"], limits=Limits(), cwd=tmp_path
    )
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.truncated is False


async def test_arguments_are_never_given_to_a_shell(tmp_path: Path) -> None:
    result = await run_bounded(["echo", "$(touch pwned); `id`"], limits=Limits(), cwd=tmp_path)
    assert result.stdout == "$(touch pwned); `id`\n"
    assert not (tmp_path / "pwned").exists()


async def test_a_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    with pytest.raises(ToolTimeout, match=r"ran longer than 0\.5 s") as caught:
        await run_bounded(
            ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"],
            limits=Limits(timeout_s=0.5),
            cwd=tmp_path,
        )
    assert time.monotonic() - started < 5
    assert caught.value.status_code == 422
    child = int(pidfile.read_text())
    assert _gone(child)  # the grandchild went with its group


async def test_output_is_capped_and_runaway_files_are_stopped(tmp_path: Path) -> None:
    result = await run_bounded(
        ["sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' x"],
        limits=Limits(max_log_bytes=1000),
        cwd=tmp_path,
    )
    assert len(result.stdout) == 500
    assert result.truncated is True
    out = tmp_path / "big.txt"
    with pytest.raises(ToolTimeout, match="wrote more than"):
        await run_bounded(
            ["sh", "-c", f"yes > {out}"],
            limits=Limits(max_output_bytes=100_000, timeout_s=20),
            cwd=tmp_path,
            output_path=out,
        )


async def test_a_missing_tool_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="not installed") as caught:
        await run_bounded(["no-such-tool-here"], limits=Limits(), cwd=tmp_path)
    assert caught.value.status_code == 503
