"""config/invoicesync.example.toml is valid and documents every key with its default."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter

from invoicesync.config import Settings, load_settings
from tests.conftest import ROOT

EXAMPLE = ROOT / "config" / "invoicesync.example.toml"
SECRET_INDIRECTIONS = {"password", "password_file", "oauth2", "maildir", "ca_file"}


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        key = field.alias or name
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= _keys(annotation, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


def test_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example validates as it stands (given the password variable it names)."""
    monkeypatch.setenv("BILLING_IMAP_PASSWORD", "secret")
    settings = load_settings(EXAMPLE)
    assert [a.name for a in settings.accounts] == ["sample", "billing"]
    assert settings.accounts[1].password is not None


def test_example_documents_every_section_key_with_its_default() -> None:
    """Every key of every section appears in the example, set to the default the code uses."""
    data: dict[str, Any] = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    defaults = Settings.model_construct()
    for key in sorted(_keys(Settings)):
        if key.startswith("accounts") or key == "accounts":
            continue
        section, _, name = key.rpartition(".")
        table = data[section] if section else data
        value = getattr(getattr(defaults, section) if section else defaults, name)
        if value is None:  # TOML has no null: such a key is shown in a comment
            assert f"{name} =" in EXAMPLE.read_text(encoding="utf-8"), key
            continue
        assert name in table, f"{key} is not documented in the example"
        if isinstance(value, dict):  # e.g. [openai] prices: a table of models
            assert table[name] == TypeAdapter(type(value)).dump_python(value), key
            continue
        assert str(table[name]) == str(value) or float(table[name]) == float(value), key


def test_example_documents_every_account_key() -> None:
    """Every account setting is shown in the example (active or in a comment)."""
    from invoicesync.config import AccountSettings

    text = EXAMPLE.read_text(encoding="utf-8")
    for key in _keys(AccountSettings):
        name = key.split(".")[0]
        if name.endswith(("_env", "_file")) or name in SECRET_INDIRECTIONS:
            assert name.split("_")[0] in text, key
        else:
            assert f"{name} =" in text or f"{name}:" in text, f"account key {key} not documented"
