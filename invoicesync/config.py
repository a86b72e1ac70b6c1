"""Configuration: a TOML file overlaid by ``INVOICESYNC_<SECTION>__<KEY>`` environment variables.

Precedence, highest first: environment, TOML file, defaults. Secrets are never
written in the file in production: each secret ``x`` can instead be given as
``x_env`` (the name of an environment variable) or ``x_file`` (a file; a relative
name is looked up in ``secrets_dir``, default ``/run/secrets``). Secrets are held as
``SecretStr`` so they print as ``**********``.

This module and ``cli`` are the only places that read the environment.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from invoicesync.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AccountSettings",
    "BreakerSettings",
    "DatabaseSettings",
    "ExtractorKind",
    "ExtractorSettings",
    "LeaseSettings",
    "RetrySettings",
    "Settings",
    "StorageSettings",
    "TimeoutSettings",
    "load_settings",
    "resolve_secret",
]

DEFAULT_CONFIG_PATH = Path("config/invoicesync.toml")
ENV_CONFIG = "INVOICESYNC_CONFIG"


class _Section(BaseModel):
    # Unknown keys are errors: a misspelt key must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    url: str = "sqlite:///invoicesync.db"
    """SQLAlchemy URL. PostgreSQL: ``postgresql+psycopg://user@host/db``."""


class StorageSettings(_Section):
    dir: Path = Path("data/documents")
    """Where documents are kept, once each, named by sha256."""
    max_document_mb: float = Field(default=25, gt=0)
    """Attachments larger than this are skipped with a reason, never loaded into the store."""


class ExtractorKind(StrEnum):
    AUTO = "auto"
    OPENAI = "openai"
    EINVOICE = "einvoice"
    OFFLINE = "offline"


class ExtractorSettings(_Section):
    kind: ExtractorKind = ExtractorKind.AUTO
    """auto = e-invoice XML when present, else OpenAI when a key is set, else offline."""


class TimeoutSettings(_Section):
    """Timeouts in seconds."""

    run: float = Field(default=600, gt=0)
    """The global watchdog: a run is aborted after this long."""
    account: float = Field(default=180, gt=0)
    """Deadline for one account within a run; the other accounts go on."""
    grace: float = Field(default=30, ge=0)
    """After the watchdog fires, seconds the run gets to stop cleanly before the process exits."""


class RetrySettings(_Section):
    """``[retries]``: how operations are retried, and how often a failed item is tried again."""

    attempts: int = Field(default=3, ge=1)
    """Attempts per operation within one run (1 = no retry)."""
    backoff_initial: float = Field(default=1.0, ge=0)
    """Seconds before the first retry; doubles each time."""
    backoff_max: float = Field(default=30.0, ge=0)
    """Longest wait between two attempts, seconds."""
    jitter: float = Field(default=1.0, ge=0)
    """Up to this many random seconds added to each wait, so clients don't retry in step."""
    retry_after_max: float = Field(default=120.0, ge=0)
    """A server's Retry-After is honoured up to this many seconds."""
    item_attempts: int = Field(default=5, ge=1)
    """Runs that may try a failing item before it is parked as failed_fatal."""
    time_scale: float = Field(default=1.0, ge=0)
    """Multiplies actual sleeps; 0 makes retries instant (tests)."""


class BreakerSettings(_Section):
    """``[breaker]``: when an endpoint counts as down, and for how long."""

    threshold: int = Field(default=3, ge=1)
    """Consecutive transient failures that open the breaker."""
    cooldown: float = Field(default=300.0, ge=0)
    """Seconds the breaker stays open before one trial call."""


class LeaseSettings(_Section):
    """``[leases]``: how overlapping runs and workers share accounts."""

    ttl: float = Field(default=60.0, gt=0)
    """Seconds a claim on an account lasts without renewal; renewed every ttl/3 while working."""


class AccountSettings(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.@-]+$")
    maildir: Path | None = None
    """Local source: a Maildir, an .mbox file, or a folder of .eml files."""

    @model_validator(mode="after")
    def _one_source(self) -> AccountSettings:
        if self.maildir is None:
            raise ValueError("an account needs a source: set maildir")
        return self


class Settings(BaseSettings):
    """The whole configuration tree; each stage receives only its own section."""

    model_config = SettingsConfigDict(
        env_prefix="INVOICESYNC_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    secrets_dir: Path = Path("/run/secrets")
    """Where relative ``*_file`` secret names are looked up."""
    database: DatabaseSettings = DatabaseSettings()
    storage: StorageSettings = StorageSettings()
    extractor: ExtractorSettings = ExtractorSettings()
    timeouts: TimeoutSettings = TimeoutSettings()
    retries: RetrySettings = RetrySettings()
    breaker: BreakerSettings = BreakerSettings()
    leases: LeaseSettings = LeaseSettings()
    accounts: list[AccountSettings] = []

    @field_validator("accounts")
    @classmethod
    def _unique_account_names(cls, accounts: list[AccountSettings]) -> list[AccountSettings]:
        seen: set[str] = set()
        for account in accounts:
            if account.name in seen:
                raise ValueError(f"duplicate account name {account.name!r}")
            seen.add(account.name)
        return accounts

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML data arrives through init kwargs (see load_settings); the
        # environment must win over it, so it goes first.
        return (env_settings, init_settings)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _describe(error: Mapping[str, Any]) -> tuple[str, str]:
    """One validation error as (dotted key, problem); never echoes the value (may be secret)."""
    parts: list[str] = []
    for item in error["loc"]:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]" if parts else f"[{item}]"]
        elif item not in {"function-after", "function-before"}:
            parts.append(str(item))
    key = ".".join(parts) or "config"
    kind = error["type"]
    if kind == "extra_forbidden":
        return key, "unknown key"
    if kind == "missing":
        return key, "required key is missing"
    return key, str(error["msg"]).removeprefix("Value error, ")


def config_path(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    """``--config``, else ``$INVOICESYNC_CONFIG``, else ``config/invoicesync.toml``."""
    if explicit:
        return Path(explicit)
    if environ.get(ENV_CONFIG):
        return Path(environ[ENV_CONFIG])
    return DEFAULT_CONFIG_PATH


def load_settings(path: Path) -> Settings:
    """Read and validate the configuration; every problem is one ``ConfigError`` line."""
    data = _read_toml(path)
    try:
        return Settings(**data)
    except ValidationError as exc:
        key, problem = _describe(exc.errors()[0])
        more = exc.error_count() - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ConfigError(f"{problem} (in {path}){suffix}", key=key) from None


def resolve_secret(
    key: str,
    *,
    value: SecretStr | None,
    env: str | None,
    file: Path | None,
    secrets_dir: Path,
    environ: Mapping[str, str] | None = None,
) -> SecretStr | None:
    """The secret named ``key`` from its direct value, ``*_env`` or ``*_file`` indirection.

    Returns ``None`` when none of the three is set; raises ``ConfigError`` naming the
    key (never the value) when an indirection points at nothing.
    """
    environ = os.environ if environ is None else environ
    given = [name for name, v in (("", value), ("_env", env), ("_file", file)) if v]
    if len(given) > 1:
        raise ConfigError("set only one of " + ", ".join(key + g for g in given), key=key)
    if value is not None:
        return value
    if env:
        if not environ.get(env):
            raise ConfigError(f"environment variable {env} is not set", key=f"{key}_env")
        return SecretStr(environ[env])
    if file is not None:
        target = file if file.is_absolute() else secrets_dir / file
        try:
            return SecretStr(target.read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise ConfigError(f"cannot read {target}: {exc.strerror}", key=f"{key}_file") from None
    return None
