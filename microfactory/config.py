"""Settings: one pydantic-settings class, `MICROFACTORY_*` variables or a TOML file."""

from __future__ import annotations

import os
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_SECRET_KEY = "dev-only-insecure-secret-key-change-me"  # noqa: S105 (refused in prod)


class Environment(StrEnum):
    """Where the server runs: development allows default secrets, production does not."""

    DEVELOPMENT = "development"
    PRODUCTION = "production"


class ConfigError(Exception):
    """The configuration is invalid; the message says which key and why."""


class _TomlSource(PydanticBaseSettingsSource):
    """Read the TOML file named by MICROFACTORY_CONFIG, if any."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path is not None:
            try:
                with path.open("rb") as fh:
                    raw = tomllib.load(fh)
            except FileNotFoundError:
                raise ConfigError(
                    f"MICROFACTORY_CONFIG names {path}, which does not exist"
                ) from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path} is not valid TOML: {exc}") from None
            # Accept both a flat file and one with a [microfactory] table.
            self._data = raw.get("microfactory", raw)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        """Return one field's value from the file."""
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class Settings(BaseSettings):
    """Everything configurable, validated at startup; unknown keys are rejected."""

    model_config = SettingsConfigDict(env_prefix="MICROFACTORY_", extra="forbid")

    environment: Environment = Environment.DEVELOPMENT
    data_dir: Path = Path("data")
    database_url: str | None = None  # default: SQLite in data_dir
    secret_key: str = DEFAULT_SECRET_KEY
    shop_name: str = "microfactory"
    shop_timezone: str = "UTC"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: str = "INFO"
    log_json: bool = True

    # Sessions and tokens
    login_token_ttl_s: int = Field(12 * 3600, ge=60)
    cookie_secure: bool | None = None  # default: True in production, False in development
    # Failed logins allowed within the window, per username and per client address, before
    # further logins are refused with 429 until the oldest failure leaves the window.
    login_max_failures_per_username: int = Field(5, ge=1)
    login_max_failures_per_address: int = Field(20, ge=1)
    login_failure_window_s: int = Field(15 * 60, ge=1)
    # A refused (429) login is answered after this delay: it costs the server a sleeping
    # coroutine, and slows a client that guesses in a loop (bench/bench_logins.py).
    login_refusal_delay_s: float = Field(1.0, ge=0, le=30)

    # Limits
    max_body_bytes: int = Field(1024 * 1024, ge=1024)  # JSON and form bodies
    max_upload_bytes: int = Field(200 * 1024 * 1024, ge=1024)  # G-code and design files
    max_photo_bytes: int = Field(8 * 1024 * 1024, ge=1024)  # a machine's photo (admin form)
    # Mesh uploads (STL, 3MF): the analysis peaks at about 700 bytes a placed triangle.
    mesh_max_triangles: int = Field(2_000_000, ge=1)
    mesh_max_vertices: int = Field(2_000_000, ge=1)
    # Files of jobs that ended longer ago than this are deleted (None: kept for ever).
    job_file_retention_days: int | None = Field(90, ge=1)
    # The most a member's job and design files may take on disk (None: no limit).
    member_storage_quota_bytes: int | None = Field(2 * 1024 * 1024 * 1024, ge=1024)

    # Machines
    # What a job does when the firmware answers one of its lines "Unknown command" (Marlin's
    # `echo:Unknown command:`) or GRBL `error:N` (error:20, an unsupported command): "fail"
    # stops the job with the reason naming the line; "flag" runs on and records the line in
    # the job's flags (`firmware_rejected`) for the operator.
    unknown_command_policy: Literal["fail", "flag"] = "fail"
    run_supervisors: bool = True  # False on extra web workers: one process per host drives
    demo_speed_factor: float = Field(20.0, gt=0)  # simulated machines move this much faster
    # The emulated link rate of the demo's simulated machines (10 bits a byte; 0: no limit).
    demo_baud: int = Field(115200, ge=0)

    # Notifications: the outbox always records; email is sent only when smtp_url is set
    # (smtp://, smtp+starttls:// or smtps://user:password@host:port).
    smtp_url: str | None = None
    mail_from: str = "microfactory@localhost"
    # Members may add their own apprise URL (ntfy, Matrix, ...) as a channel. Off by default:
    # the server posts to whatever such a URL names, so a member could make it reach hosts
    # of the shop's own network (json://10.0.0.5/...). The admin's shop channels are always on.
    notify_member_urls: bool = False
    # A delivery (email or push) that fails is retried this many times in all, with backoff
    # (30 s, then 4x longer each time, at most 6 h between attempts), then given up and logged.
    notify_max_attempts: int = Field(5, ge=1, le=20)

    # The shop-wide queue
    auto_dispatch: bool = True  # the matcher starts queued jobs on free machines by itself
    queue_interval_s: float = Field(2.0, gt=0, le=300)
    max_heating_machines: int | None = Field(3, ge=1)  # staggered start; None = no limit
    fair_share_window_days: int = Field(30, ge=1, le=365)  # recent usage that weighs a member

    # -- The network, shop side (issue 12; microfactory/network/) --
    # The capacity report is public (anonymous GET) when true; otherwise it needs a login. On a
    # hub, it also makes the stored reports, the shop list and routing public.
    network_publish: bool = False
    # Hubs to push the signed capacity report to: base URLs, comma-separated in the environment.
    network_hubs: Annotated[list[str], NoDecode] = Field(default_factory=list)
    network_report_ttl_s: int = Field(900, ge=60, le=7 * 24 * 3600)  # a report's lifetime
    # -- end of the network, shop side --

    @field_validator("network_hubs", mode="before")
    @classmethod
    def _hub_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [part.strip() for part in v.split(",") if part.strip()]
        if isinstance(v, list):
            for url in v:
                if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                    raise ValueError(f"network_hubs: {url!r} is not an http(s):// base URL")
            return [url.rstrip("/") for url in v]
        return v

    # -- The network: hub side (issue 12, microfactory/network/hub) --
    hub: bool = False  # also a hub: takes signed reports, mirrors other hubs, routes jobs
    hub_open: bool = False  # pin a new shop's key on first use (False: an admin approves it)
    # Other hubs to mirror (base URLs, comma-separated in the environment), pulled each
    # scheduler tick (30 s).
    hub_upstreams: Annotated[list[str], NoDecode] = Field(default_factory=list)
    hub_clock_skew_s: int = Field(120, ge=0, le=3600)  # a report issued later than this is refused
    # Group commit: pushes that arrive while a commit is under way are stored together, in
    # one transaction, each still answered on its own (microfactory/network/hub/batch.py).
    hub_ingest_batch: bool = True
    hub_ingest_batch_max: int = Field(64, ge=1, le=1000)  # reports per group commit at most
    # Worker processes that check mirrored pages (signatures, canonical form) while the page
    # before is stored (microfactory/network/hub/pipeline.py); 0 checks in the server itself.
    hub_check_workers: int = Field(1, ge=0, le=8)

    @field_validator("hub_upstreams", mode="before")
    @classmethod
    def _split_upstreams(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [u.strip().rstrip("/") for u in v.split(",") if u.strip()]
        if isinstance(v, list):
            return [str(u).strip().rstrip("/") for u in v if str(u).strip()]
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING or ERROR")
        return v

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, v: Path) -> Path:
        # Resolved once, here: every path under it (uploads, work folders, the SQLite file) is
        # then absolute, so external tools run with another working directory (OpenSCAD and
        # PrusaSlicer run in the job's work folder) still find their inputs.
        return Path(v).expanduser().resolve()

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("sqlite", "postgresql")):
            raise ValueError("database_url must be a sqlite:// or postgresql+psycopg:// URL")
        return v

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.environment is Environment.PRODUCTION and (
            self.secret_key == DEFAULT_SECRET_KEY or len(self.secret_key) < 32
        ):
            raise ValueError(
                "secret_key must be set to a random value of at least 32 characters in "
                "production (MICROFACTORY_SECRET_KEY)"
            )
        return self

    @property
    def secure_cookies(self) -> bool:
        """Return whether cookies carry the Secure flag."""
        if self.cookie_secure is not None:
            return self.cookie_secure
        return self.environment is Environment.PRODUCTION

    @property
    def sync_database_url(self) -> str:
        """Return the database URL for synchronous use (Alembic)."""
        url = self.database_url or f"sqlite:///{(self.data_dir / 'microfactory.sqlite3').resolve()}"
        return url.replace("sqlite+aiosqlite://", "sqlite://")

    @property
    def async_database_url(self) -> str:
        """Return the database URL for the async engine."""
        url = self.sync_database_url
        if url.startswith("sqlite://"):
            return "sqlite+aiosqlite://" + url[len("sqlite://") :]
        if url.startswith("postgresql://"):
            return "postgresql+psycopg://" + url[len("postgresql://") :]
        return url

    @property
    def is_postgresql(self) -> bool:
        """Return whether the database is PostgreSQL (several processes can share it)."""
        return self.sync_database_url.startswith("postgresql")

    @property
    def upload_dir(self) -> Path:
        """Return where uploaded files are stored, under generated names."""
        return self.data_dir / "files"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Order sources: arguments, then environment, then the TOML file."""
        path = os.environ.get("MICROFACTORY_CONFIG")
        toml = _TomlSource(settings_cls, Path(path) if path else None)
        return (init_settings, env_settings, toml)


def _unknown_env_keys() -> list[str]:
    known = {f"MICROFACTORY_{name.upper()}" for name in Settings.model_fields}
    known.add("MICROFACTORY_CONFIG")
    # Test and tool variables that are not server settings.
    allowed_prefixes = (
        "MICROFACTORY_TEST_",
        "MICROFACTORY_OCTOPRINT_VENV",
        "MICROFACTORY_MOONRAKER_VENV",
        "MICROFACTORY_PRUSALINK_VENV",
    )
    return sorted(
        k
        for k in os.environ
        if k.startswith("MICROFACTORY_") and k not in known and not k.startswith(allowed_prefixes)
    )


def load_settings(**overrides: Any) -> Settings:
    """Load and validate settings; raise ConfigError with a clear message on bad input."""
    unknown = _unknown_env_keys()
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; known settings are "
            + ", ".join(f"MICROFACTORY_{n.upper()}" for n in Settings.model_fields)
        )
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "settings"
            if err["type"] == "extra_forbidden":
                parts.append(f"unknown setting {loc!r}")
            else:
                parts.append(f"{loc}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(parts)) from None
