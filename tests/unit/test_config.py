"""Configuration: environment, TOML file, unknown keys, production secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from microfactory.config import ConfigError, Environment, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("MICROFACTORY_") and not key.startswith("MICROFACTORY_TEST_"):
            monkeypatch.delenv(key)


def test_default_database_is_sqlite_under_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MICROFACTORY_DATA_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.sync_database_url == f"sqlite:///{tmp_path / 'microfactory.sqlite3'}"
    assert settings.async_database_url.startswith("sqlite+aiosqlite:///")


def test_postgres_url_is_used_for_both_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROFACTORY_DATABASE_URL", "postgresql+psycopg://u:p@127.0.0.1/mf")
    settings = load_settings()
    assert settings.sync_database_url == "postgresql+psycopg://u:p@127.0.0.1/mf"
    assert settings.async_database_url == "postgresql+psycopg://u:p@127.0.0.1/mf"


def test_unknown_environment_key_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROFACTORY_DATABSE_URL", "sqlite:///x")  # a typo
    with pytest.raises(ConfigError, match="MICROFACTORY_DATABSE_URL"):
        load_settings()


@pytest.mark.parametrize("peer", ["OCTOPRINT", "MOONRAKER", "PRUSALINK"])
def test_the_test_peers_venv_variables_are_not_server_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, peer: str
) -> None:
    """The test command's peer venvs may be set beside a server without stopping it."""
    monkeypatch.setenv(f"MICROFACTORY_{peer}_VENV", str(tmp_path / "venv"))
    assert load_settings().port == 8000


def test_toml_file_is_read_and_unknown_keys_rejected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = tmp_path / "mf.toml"
    cfg.write_text('shop_name = "Fablab Nord"\nport = 9000\n')
    monkeypatch.setenv("MICROFACTORY_CONFIG", str(cfg))
    settings = load_settings()
    assert settings.shop_name == "Fablab Nord"
    assert settings.port == 9000

    cfg.write_text('shop_name = "x"\nshop_nmae = "typo"\n')
    with pytest.raises(ConfigError, match="shop_nmae"):
        load_settings()


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "mf.toml"
    cfg.write_text("port = 9000\n")
    monkeypatch.setenv("MICROFACTORY_CONFIG", str(cfg))
    monkeypatch.setenv("MICROFACTORY_PORT", "9100")
    assert load_settings().port == 9100


def test_missing_config_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROFACTORY_CONFIG", "/nonexistent/mf.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()


def test_default_secret_refused_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROFACTORY_ENVIRONMENT", "production")
    with pytest.raises(ConfigError, match="secret_key"):
        load_settings()
    monkeypatch.setenv("MICROFACTORY_SECRET_KEY", "x" * 40)
    settings = load_settings()
    assert settings.environment is Environment.PRODUCTION
    assert settings.secure_cookies is True


def test_bad_values_name_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROFACTORY_PORT", "not-a-port")
    with pytest.raises(ConfigError, match="port"):
        load_settings()
