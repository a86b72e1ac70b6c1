"""Configuration: a TOML file overlaid by ``INVOICESYNC_<SECTION>__<KEY>`` environment variables.

Precedence, highest first: environment, TOML file, defaults. Secrets are never
written in the file in production: each secret ``x`` can instead be given as
``x_env`` (the name of an environment variable) or ``x_file`` (a file; a relative
name is looked up in ``secrets_dir``, default ``/run/secrets``). Secrets are held as
``SecretStr`` so they print as ``**********``.

This module and ``cli`` are the only places that read the environment.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import tomllib
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

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
    "CacheSettings",
    "DatabaseSettings",
    "ExtractorKind",
    "ExtractorSettings",
    "ImapPoolSettings",
    "LeaseSettings",
    "LinkSettings",
    "LoggingSettings",
    "MetricsSettings",
    "ModelPrice",
    "OAuth2Settings",
    "OpenAISettings",
    "RetrySettings",
    "RunSettings",
    "ScheduleSettings",
    "SearchSettings",
    "Settings",
    "StorageSettings",
    "TimeoutSettings",
    "load_settings",
    "parse_interval",
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
    tokens_dir: Path = Path("data/tokens")
    """Rotated OAuth2 refresh tokens, one file per account (mode 0600)."""
    max_document_mb: float = Field(default=25, gt=0)
    """Attachments larger than this are skipped with a reason, never loaded into the store."""


class ExtractorKind(StrEnum):
    AUTO = "auto"
    OPENAI = "openai"
    EINVOICE = "einvoice"
    OFFLINE = "offline"


class ModelPrice(_Section):
    """USD per million prompt (``input``) and completion (``output``) tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


# Published list prices at the time of writing; override in [openai.prices].
_DEFAULT_PRICES = {
    "gpt-4o-mini": ModelPrice(input=0.15, output=0.60),
    "gpt-4o": ModelPrice(input=2.50, output=10.00),
    "gpt-4.1": ModelPrice(input=2.00, output=8.00),
    "gpt-4.1-mini": ModelPrice(input=0.40, output=1.60),
    "gpt-4.1-nano": ModelPrice(input=0.10, output=0.40),
}


class CacheSettings(_Section):
    """``[cache]``: model results kept by document sha256 + model + prompt version."""

    enabled: bool = True
    ttl_hours: float = Field(default=24, gt=0)
    """A cached result is reused for this long."""


class ExtractorSettings(_Section):
    kind: ExtractorKind = ExtractorKind.AUTO
    """auto = e-invoice XML when present, else OpenAI when a key is set, else offline."""


class ExtractSettings(_Section):
    """``[extract]``: the worker processes that parse documents and mails."""

    processes: int = Field(default=0, ge=0)
    """Worker processes side by side; 0 = one per CPU."""
    memory_mb: int = Field(default=400, ge=0)
    """Address-space limit of each worker (RLIMIT_AS), in MiB; 0 = none."""

    def worker_count(self) -> int:
        """The number of worker processes: ``processes``, or the CPUs this process may use."""
        return self.processes or usable_cpus()


def usable_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a container's CPU quota.

    A Kubernetes ``limits.cpu: "1"`` on a 16-core node must mean one worker, not
    sixteen: each worker may take up to ``memory_mb``, and the quota would share
    one CPU between them anyway.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota in CPUs (cgroup v2 ``cpu.max`` or v1 CFS), None when unlimited."""
    try:
        quota, _, period = (root / "cpu.max").read_text().partition(" ")
        if quota.strip() != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


class OpenAISettings(_Section):
    """``[openai]``: the model that reads invoices without e-invoice XML."""

    model: str = "gpt-4o-mini"
    api_key: SecretStr | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    api_key_file: Path | None = None
    base_url: str = ""
    """Any OpenAI-compatible endpoint (Azure OpenAI, vLLM, Ollama …); empty = OpenAI's."""
    max_concurrency: int = Field(default=4, ge=1)
    """Model requests in flight at once, per process."""
    requests_per_minute: int = Field(default=0, ge=0)
    """Client-side request budget per minute; 0 = unlimited (the server's 429s still count)."""
    tokens_per_minute: int = Field(default=0, ge=0)
    """Client-side token budget per minute (prompt + answer, estimated); 0 = unlimited."""
    max_pages: int = Field(default=10, ge=1)
    """Pages sent per document: of the text layer, or of the PDF itself for a scan."""
    scanned_pdfs: Literal["file", "skip"] = "file"
    """A PDF without a text layer: "file" sends the PDF to the model as a file input
    (for models that read files), "skip" fails it as unreadable."""
    prices: dict[str, ModelPrice] = Field(default_factory=lambda: dict(_DEFAULT_PRICES))
    """USD per million tokens by model, for the run summary's cost estimate; merged over
    the built-in list prices."""

    @field_validator("prices", mode="before")
    @classmethod
    def _over_defaults(cls, value: Any) -> Any:
        return {**_DEFAULT_PRICES, **value} if isinstance(value, Mapping) else value


class TimeoutSettings(_Section):
    """Timeouts in seconds."""

    run: float = Field(default=600, gt=0)
    """The global watchdog: a run is aborted after this long."""
    account: float = Field(default=180, gt=0)
    """Deadline for one account within a run; the other accounts go on."""
    grace: float = Field(default=30, ge=0)
    """After the watchdog fires, seconds the run gets to stop cleanly before the process exits."""
    imap_connect: float = Field(default=30, gt=0)
    imap_login: float = Field(default=20, gt=0)
    imap_search: float = Field(default=15, gt=0)
    imap_fetch: float = Field(default=20, gt=0)
    imap_mark: float = Field(default=10, gt=0)
    oauth_token: float = Field(default=20, gt=0)
    """The OAuth2 token endpoint's answer."""
    http_connect: float = Field(default=5, gt=0)
    http_read: float = Field(default=15, gt=0)
    """Longest silence while reading an HTTP answer."""
    download: float = Field(default=60, gt=0)
    """Total time for one link download, redirects and retries included."""
    openai: float = Field(default=60, gt=0)
    """One model request."""
    extract_document: float = Field(default=60, gt=0)
    """One document (or one batch of mails) in a worker process, which is killed after it."""


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
    openai: int = Field(default=3, ge=1)
    """Attempts per model request (429, 5xx, timeouts), Retry-After honoured."""
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


class LinkSettings(_Section):
    """``[links]``: invoices behind "download your invoice" links in the mail body."""

    enabled: bool = True
    max_per_message: int = Field(default=5, ge=0)
    """Candidate links tried per mail, best ranked first."""
    allow_hosts: list[str] = []
    """Host names or CIDRs allowed although private (intranets, tests); public hosts need none."""
    max_mb: float = Field(default=25, gt=0)
    """A body larger than this is abandoned."""
    retries: int = Field(default=2, ge=0)
    """Extra attempts per link on transient failures (connection, 429, 5xx)."""
    max_redirects: int = Field(default=5, ge=0)


class RunSettings(_Section):
    """``[run]``: how one run works."""

    parallel_accounts: int = Field(default=4, ge=1)
    """Accounts worked at the same time (threads), each under its own deadline."""


class LeaseSettings(_Section):
    """``[leases]``: how overlapping runs and workers share accounts."""

    ttl: float = Field(default=60.0, gt=0)
    """Seconds a claim on an account lasts without renewal; renewed every ttl/3 while working."""


class SearchSettings(_Section):
    """Server-side filters for IMAP: only matching messages are examined at all."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    since: dt.date | None = None
    """Only messages received on or after this day."""
    from_: list[str] = Field(default=[], alias="from")
    """Any of these senders (substrings, e.g. "@vendor.com")."""
    subject: list[str] = []
    """Any of these words in the subject."""


class OAuth2Settings(_Section):
    """XOAUTH2 login: the access token is refreshed from the refresh token at ``token_url``."""

    token_url: str
    client_id: str
    client_secret: SecretStr | None = None
    client_secret_env: str | None = None
    client_secret_file: Path | None = None
    refresh_token: SecretStr | None = None
    refresh_token_env: str | None = None
    refresh_token_file: Path | None = None
    scope: str | None = None


_AFTER_INGEST = re.compile(r"^(none|seen|flag|move:.+|label:.+)$")


class AccountSettings(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.@-]+$")
    maildir: Path | None = None
    """Local source: a Maildir, an .mbox file, or a folder of .eml files."""
    imap_host: str | None = None
    imap_port: int | None = Field(default=None, gt=0, lt=65536)
    """Default 993 for ssl, 143 otherwise."""
    security: Literal["ssl", "starttls", "none"] = "ssl"
    allow_insecure: bool = False
    """Required for security = "none": passwords then cross the network in clear."""
    tls_verify: bool = True
    ca_file: Path | None = None
    """A private CA's certificate, for servers whose certificate a public CA did not sign."""
    username: str | None = None
    password: SecretStr | None = None
    password_env: str | None = None
    password_file: Path | None = None
    oauth2: OAuth2Settings | None = None
    folders: list[str] = ["INBOX"]
    search: SearchSettings = SearchSettings()
    after_ingest: str = "none"
    """What to do with a mail once its documents are stored: none | seen | flag |
    move:<folder> | label:<gmail label>."""

    @model_validator(mode="after")
    def _one_source(self) -> AccountSettings:
        if (self.maildir is None) == (self.imap_host is None):
            raise ValueError("an account needs exactly one source: maildir or imap_host")
        if self.imap_host is not None:
            if not self.username:
                raise ValueError("an IMAP account needs a username")
            if self.security == "none" and not self.allow_insecure:
                raise ValueError(
                    'security = "none" sends the password in clear: '
                    "set allow_insecure = true to accept that"
                )
            if not _AFTER_INGEST.match(self.after_ingest):
                raise ValueError(
                    "after_ingest must be none, seen, flag, move:<folder> or label:<label>"
                )
        return self

    @property
    def port(self) -> int:
        return self.imap_port or (993 if self.security == "ssl" else 143)


class LoggingSettings(_Section):
    """``[logging]``: where runs tell what they do (stderr)."""

    format: Literal["text", "json"] = "text"
    """text for people, json for log collectors (one object per line); --log-format wins."""
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    """-v / -vv / --quiet on the command line win."""


class ScheduleSettings(_Section):
    """``[schedule]``: ``invoicesync schedule`` runs a cycle every so often."""

    every: str = "30m"
    """Interval between cycle starts: 90s, 30m, 1h, 1h30m (--every wins)."""
    jitter: float = Field(default=0.1, ge=0, le=1)
    """Up to this fraction of the interval added at random, so replicas don't start in step."""

    @field_validator("every")
    @classmethod
    def _interval(cls, value: str) -> str:
        parse_interval(value)
        return value


_INTERVAL = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


def parse_interval(text: str) -> float:
    """Seconds in ``90s``, ``30m``, ``1h``, ``1h30m`` or a bare number of seconds."""
    match = _INTERVAL.fullmatch(text.strip().lower())
    if not text.strip() or match is None or not any(match.groups()):
        raise ValueError(f"{text!r} is not an interval like 90s, 30m, 1h or 1h30m")
    hours, minutes, seconds = (float(part or 0) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError(f"{text!r}: the interval must be positive")
    return total


class MetricsSettings(_Section):
    """``[metrics]``: Prometheus metrics after each run (see README, Metrics)."""

    textfile: Path | None = None
    """Write them here after each run, for node_exporter's textfile collector."""
    pushgateway: str = Field(default="", pattern=r"^(https?://\S+)?$")
    """Push them here after each run (replacing the job's group), e.g. http://pushgateway:9091."""
    job: str = Field(default="invoicesync", min_length=1)
    """The Pushgateway job label."""
    timeout: float = Field(default=10, gt=0)
    """Seconds per socket operation when pushing."""
    port: int = Field(default=0, ge=0, lt=65536)
    """invoicesync schedule serves /metrics on this port; 0 = off."""
    address: str = "127.0.0.1"
    """The /metrics listen address (0.0.0.0 in a container)."""


class ImapPoolSettings(_Section):
    max_connections: int = Field(default=5, ge=1)
    """Connections per account."""
    idle_timeout: float = Field(default=300, gt=0)
    """A connection idle this long is closed instead of reused."""


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
    extract: ExtractSettings = ExtractSettings()
    timeouts: TimeoutSettings = TimeoutSettings()
    retries: RetrySettings = RetrySettings()
    breaker: BreakerSettings = BreakerSettings()
    leases: LeaseSettings = LeaseSettings()
    run: RunSettings = RunSettings()
    links: LinkSettings = LinkSettings()
    openai: OpenAISettings = OpenAISettings()
    cache: CacheSettings = CacheSettings()
    imap_pool: ImapPoolSettings = ImapPoolSettings()
    logging: LoggingSettings = LoggingSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    metrics: MetricsSettings = MetricsSettings()
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
        settings = Settings(**data)
    except ValidationError as exc:
        key, problem = _describe(exc.errors()[0])
        more = exc.error_count() - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ConfigError(f"{problem} (in {path}){suffix}", key=key) from None
    return _with_secrets(settings)


def _with_secrets(settings: Settings) -> Settings:
    """Resolve every ``*_env`` / ``*_file`` secret now, so a missing one is a config error."""
    accounts = []
    for index, account in enumerate(settings.accounts):
        prefix = f"accounts[{index}]"
        password = resolve_secret(
            f"{prefix}.password",
            value=account.password,
            env=account.password_env,
            file=account.password_file,
            secrets_dir=settings.secrets_dir,
        )
        oauth2 = account.oauth2
        if oauth2 is not None:
            oauth2 = oauth2.model_copy(
                update={
                    name: resolve_secret(
                        f"{prefix}.oauth2.{name}",
                        value=getattr(oauth2, name),
                        env=getattr(oauth2, f"{name}_env"),
                        file=getattr(oauth2, f"{name}_file"),
                        secrets_dir=settings.secrets_dir,
                    )
                    for name in ("client_secret", "refresh_token")
                }
            )
            if oauth2.refresh_token is None:
                raise ConfigError("XOAUTH2 needs a refresh token", key=f"{prefix}.oauth2")
        elif account.imap_host is not None and password is None:
            raise ConfigError("an IMAP account needs a password or oauth2", key=prefix)
        accounts.append(account.model_copy(update={"password": password, "oauth2": oauth2}))
    openai = settings.openai
    env = openai.api_key_env
    if openai.api_key is not None or openai.api_key_file is not None:
        env = None  # an explicit value or file wins over the environment
    elif env and not os.environ.get(env):
        env = None  # no key at all is fine: the offline extractor runs instead
    key = resolve_secret(
        "openai.api_key",
        value=openai.api_key,
        env=env,
        file=openai.api_key_file,
        secrets_dir=settings.secrets_dir,
    )
    openai = openai.model_copy(update={"api_key": key})
    return settings.model_copy(update={"accounts": accounts, "openai": openai})


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
