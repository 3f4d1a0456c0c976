"""The package as a newcomer installs it: a built wheel, a fresh venv, an empty folder."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent


def test_every_python_package_is_in_the_wheel() -> None:
    # pyproject.toml lists packages explicitly (migrations/ and web/ are mapped into the
    # package); a new package folder that is not listed would be missing from the wheel.
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in ("microfactory", "drivers")
        for init in (REPO / top).rglob("__init__.py")
    }
    assert found - listed == set(), "add these packages to [tool.setuptools] in pyproject.toml"
    assert config["package-dir"] == {
        "microfactory.migrations": "migrations",
        "microfactory.assets": "web",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel and install it, with its dependencies, into a new virtual environment."""
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(REPO)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    wheels = list(dist.glob("microfactory-*.whl"))
    assert len(wheels) == 1
    venv = root / "venv"
    # The venv gets no pip of its own (ensurepip costs ~10 s on a loaded machine): the test
    # venv's pip installs into it (`--python`). No byte-compiling of every dependency at
    # install either: Python compiles what the server imports when it imports it.
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300
    )
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--quiet", "--no-compile", "--disable-pip-version-check", str(wheels[0])],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    return venv


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_wheel_migrates_and_serves_from_an_empty_folder(
    wheel_venv: Path, tmp_path: Path
) -> None:
    # Nothing of the repository is reachable: another folder, a clean environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICROFACTORY_", "PYTHON"))}
    env |= {"MICROFACTORY_LOG_JSON": "false", "MICROFACTORY_RUN_SUPERVISORS": "false"}
    cli = str(wheel_venv / "bin" / "microfactory")
    site = subprocess.run(
        [str(wheel_venv / "bin" / "python"), "-c", "import microfactory as m; print(m.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert str(wheel_venv) in site.stdout  # the installed copy, not the repository's
    upgraded = subprocess.run(
        [cli, "db", "upgrade"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert upgraded.returncode == 0, upgraded.stderr
    assert (tmp_path / "data" / "microfactory.sqlite3").is_file()

    port = _free_port()
    server = subprocess.Popen(
        [cli, "serve", "--port", str(port)], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            time.sleep(0.1)
        else:
            pytest.fail("the installed server never answered /healthz")
        login = httpx.get(f"{base}/login", timeout=10)
        assert login.status_code == 200
        assert '<form method="post" action="/login">' in login.text
        sheets = re.findall(r'<link rel="stylesheet" href="([^"]+)"', login.text)
        assert sheets
        for href in sheets:
            css = httpx.get(base + href, timeout=10)
            assert css.status_code == 200, href
            assert css.headers["content-type"].startswith("text/css")
            assert len(css.content) > 100
        assert httpx.get(f"{base}/openapi.json", timeout=10).json()["info"]["title"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
