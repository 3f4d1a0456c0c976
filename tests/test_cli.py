"""The `microfactory` command line, run as a newcomer would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from microfactory import migrate
from microfactory.app import create_app
from microfactory.config import Settings


def run_cli(args: list[str], data_dir: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFACTORY_")}
    env["MICROFACTORY_DATA_DIR"] = str(data_dir)
    env["MICROFACTORY_LOG_JSON"] = "false"
    return subprocess.run(
        [sys.executable, "-m", "microfactory.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


async def test_db_user_and_token_commands(tmp_path: Path) -> None:
    assert run_cli(["db", "upgrade"], tmp_path).returncode == 0
    created = run_cli(
        ["user", "create", "--username", "ada", "--role", "admin", "--password-stdin"],
        tmp_path,
        stdin="ada-password-1\n",
    )
    assert created.returncode == 0, created.stderr
    assert "created admin 'ada'" in created.stdout
    assert "ada-password-1" not in created.stdout + created.stderr

    dup = run_cli(
        ["user", "create", "--username", "ada", "--password-stdin"], tmp_path, stdin="x" * 10
    )
    assert dup.returncode != 0
    assert "already taken" in dup.stderr

    token = run_cli(["token", "create", "--username", "ada"], tmp_path)
    assert token.returncode == 0, token.stderr
    value = token.stdout.strip()
    assert value.startswith("mf_")

    settings = Settings(data_dir=tmp_path)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {value}"})
    assert me.status_code == 200
    assert me.json()["role"] == "admin"


def migrated(data_dir: Path) -> None:
    """Migrate the database the CLI will find (set-up, not under test: no process of its
    own; `db upgrade` itself is tested above)."""
    migrate.upgrade(Settings(data_dir=data_dir))


def test_token_for_unknown_user_fails_clearly(tmp_path: Path) -> None:
    migrated(tmp_path)
    result = run_cli(["token", "create", "--username", "ghost"], tmp_path)
    assert result.returncode != 0
    assert "no user named 'ghost'" in result.stderr


def test_short_password_refused(tmp_path: Path) -> None:
    migrated(tmp_path)
    result = run_cli(
        ["user", "create", "--username", "bob", "--password-stdin"], tmp_path, stdin="short\n"
    )
    assert result.returncode != 0
    assert "at least 8" in result.stderr


def test_db_downgrade_to_base(tmp_path: Path) -> None:
    assert run_cli(["db", "upgrade"], tmp_path).returncode == 0
    result = run_cli(["db", "downgrade", "base"], tmp_path)
    assert result.returncode == 0, result.stderr


def test_bad_configuration_is_reported_not_a_traceback(tmp_path: Path) -> None:
    env_args = ["db", "upgrade"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFACTORY_")}
    env["MICROFACTORY_PROT"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "microfactory.cli", *env_args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "MICROFACTORY_PROT" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("role", ["wizard"])
def test_unknown_role_refused(tmp_path: Path, role: str) -> None:
    result = run_cli(["user", "create", "--username", "x", "--role", role], tmp_path)
    assert result.returncode != 0
    assert "invalid choice" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["user", "create", "--username", "ada", "--password-stdin"],
        ["token", "create", "--username", "ada"],
    ],
    ids=["user-create", "token-create"],
)
def test_commands_on_a_missing_data_directory_say_what_to_run(
    tmp_path: Path, args: list[str]
) -> None:
    data_dir = tmp_path / "not-made-yet"
    done = run_cli(args, data_dir, stdin="ada-password-1\n")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "microfactory db upgrade" in lines[0]
    assert not data_dir.exists()  # nothing was created on the way


def test_commands_on_an_unmigrated_database_say_what_to_run(tmp_path: Path) -> None:
    (tmp_path / "microfactory.sqlite3").touch()  # an empty file: a database with no tables
    done = run_cli(["user", "create", "--username", "ada", "--password-stdin"], tmp_path, "x")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "error: the database is empty; run `microfactory db upgrade` first"
    ]
    assert run_cli(["db", "upgrade"], tmp_path).returncode == 0
    again = run_cli(["user", "create", "--username", "ada", "--password-stdin"], tmp_path, "a" * 9)
    assert again.returncode == 0, again.stderr


def test_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    env_url = "postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFACTORY_")}
    env |= {"MICROFACTORY_DATA_DIR": str(tmp_path), "MICROFACTORY_DATABASE_URL": env_url}
    for args in (["db", "upgrade"], ["token", "create", "--username", "ada"]):
        done = subprocess.run(
            [sys.executable, "-m", "microfactory.cli", *args],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode != 0
        assert "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "database" in done.stderr


@pytest.mark.parametrize("flags", [["--workers", "3"], ["--no-machines"]])
def test_several_workers_on_sqlite_are_refused_with_the_reason(
    tmp_path: Path, flags: list[str]
) -> None:
    done = run_cli(["serve", *flags], tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "needs PostgreSQL" in done.stderr
    assert "SQLite allows one writer" in done.stderr
