"""Configuration: file, environment overrides, secrets, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from invoicesync.config import config_path, load_settings, resolve_secret
from invoicesync.errors import ConfigError

GOOD = """
[database]
url = "sqlite:///x.db"
[timeouts]
run = 300
[[accounts]]
name = "billing"
maildir = "mail"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "invoicesync.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_file_values_and_defaults(tmp_path: Path) -> None:
    """Values come from the file; unset keys keep their documented defaults."""
    settings = load_settings(_write(tmp_path, GOOD))
    assert settings.database.url == "sqlite:///x.db"
    assert settings.timeouts.run == 300
    assert settings.timeouts.account == 180
    assert settings.accounts[0].maildir == Path("mail")


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """INVOICESYNC_<SECTION>__<KEY> wins over the file."""
    monkeypatch.setenv("INVOICESYNC_DATABASE__URL", "sqlite:///env.db")
    monkeypatch.setenv("INVOICESYNC_TIMEOUTS__ACCOUNT", "42")
    settings = load_settings(_write(tmp_path, GOOD))
    assert settings.database.url == "sqlite:///env.db"
    assert settings.timeouts.account == 42
    assert settings.timeouts.run == 300  # the rest of the section still comes from the file


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (GOOD.replace("maildir =", "maildirr ="), "accounts[0].maildirr", "unknown key"),
        (GOOD.replace("run = 300", "run = 'soon'"), "timeouts.run", "valid number"),
        (GOOD.replace("[timeouts]", "[timeout]"), "timeout", "unknown key"),
        (GOOD.replace('name = "billing"\n', ""), "accounts[0].name", "missing"),
        (GOOD + '[[accounts]]\nname = "billing"\nmaildir = "m"\n', "accounts", "duplicate"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    """Each kind of mistake is one error naming the key and the problem."""
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, text))
    message = str(caught.value)
    assert message.startswith(key + ":")
    assert problem in message
    assert "\n" not in message


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    """A missing file and broken TOML are config errors naming the file."""
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(_write(tmp_path, "[database\n"))


def test_config_path_precedence(tmp_path: Path) -> None:
    """--config beats $INVOICESYNC_CONFIG, which beats the default path."""
    assert config_path("a.toml", {"INVOICESYNC_CONFIG": "b.toml"}) == Path("a.toml")
    assert config_path(None, {"INVOICESYNC_CONFIG": "b.toml"}) == Path("b.toml")
    assert config_path(None, {}) == Path("config/invoicesync.toml")


def test_secret_indirection(tmp_path: Path) -> None:
    """A secret comes from its value, an environment variable or a file in the secrets dir."""
    (tmp_path / "imap_pw").write_text("from-file\n", encoding="utf-8")
    common = {"secrets_dir": tmp_path, "environ": {"PW": "from-env"}}
    direct = resolve_secret("password", value=SecretStr("v"), env=None, file=None, **common)
    via_env = resolve_secret("password", value=None, env="PW", file=None, **common)
    via_file = resolve_secret("password", value=None, env=None, file=Path("imap_pw"), **common)
    assert [s.get_secret_value() for s in (direct, via_env, via_file) if s] == [
        "v",
        "from-env",
        "from-file",
    ]
    assert resolve_secret("password", value=None, env=None, file=None, **common) is None


def test_missing_secret_is_a_config_error_without_the_value(tmp_path: Path) -> None:
    """An indirection that points at nothing names the key; a secret is never echoed."""
    with pytest.raises(ConfigError, match="password_env: environment variable NOPE is not set"):
        resolve_secret(
            "password", value=None, env="NOPE", file=None, secrets_dir=tmp_path, environ={}
        )
    with pytest.raises(ConfigError, match="password_file"):
        resolve_secret("password", value=None, env=None, file=Path("absent"), secrets_dir=tmp_path)
    with pytest.raises(ConfigError, match="only one of") as caught:
        resolve_secret(
            "password",
            value=SecretStr("hunter2"),
            env="PW",
            file=None,
            secrets_dir=tmp_path,
            environ={"PW": "x"},
        )
    assert "hunter2" not in str(caught.value)


def test_cgroup_cpu_quota_caps_the_default_worker_count(tmp_path: Path) -> None:
    """A container's CPU limit, not the node's cores, sizes the default pool."""
    from invoicesync.config import _cgroup_cpu_quota

    assert _cgroup_cpu_quota(tmp_path) is None  # no cgroup files: unlimited
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_cpu_quota(tmp_path) == 0.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cgroup_cpu_quota(tmp_path) is None
