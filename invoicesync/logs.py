"""Logging: readable text on a terminal, JSON lines for collectors, never a secret.

Every line carries the run id, account, stage and mail (``message_key``) or
document it concerns, from context variables that the pipeline sets with
``log_context`` around each unit of work (threads start empty: each worker sets
its own).

Secrets are removed by the formatter, after the message and any traceback are
rendered, so no code path (ours or a library's at DEBUG) can leak one: every
secret value found in the settings or registered at runtime (OAuth access
tokens) is replaced, and so are strings shaped like API keys, bearer tokens,
passwords in URLs and URL query strings (signed download links).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from pydantic import BaseModel, SecretStr

__all__ = [
    "CONTEXT_FIELDS",
    "configure",
    "current_context",
    "log_context",
    "redact",
    "register_secret",
    "register_settings_secrets",
]

#: The context fields on every line (None when not applicable).
CONTEXT_FIELDS = ("run_id", "account", "stage", "message_key", "document")
_context: dict[str, contextvars.ContextVar[Any]] = {
    name: contextvars.ContextVar(f"invoicesync_{name}", default=None) for name in CONTEXT_FIELDS
}

_REDACTED = "[redacted]"
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secret_pattern: re.Pattern[str] | None = None
# Shapes of secrets that were never registered: API keys, bearer tokens, URL userinfo
# and query strings (signed links carry their signature there).
_SHAPES = [
    (re.compile(r"sk-[A-Za-z0-9_-]{8,}"), "sk-" + _REDACTED),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + _REDACTED),
    (re.compile(r"(?i)\b(https?://)[^/\s:@]+:[^/\s@]+@"), r"\1" + _REDACTED + "@"),
    (re.compile(r"(?i)\b(https?://[^\s?#\"'<>]+)\?[^\s\"'<>]+"), r"\1?…"),
    # An HTTP request line as urllib3 logs it: "GET /path?query HTTP/1.1".
    (re.compile(r"\b((?:GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) /[^\s?]*)\?\S+"), r"\1?…"),
]
# Short values (e.g. "x") would redact half of every line; such secrets are too weak
# to matter and too common to match.
_MIN_SECRET = 4


def register_secret(value: str | None) -> None:
    """Never log ``value`` (an OAuth access token, a rotated refresh token …)."""
    global _secret_pattern
    if not value or len(value) < _MIN_SECRET:
        return
    with _secrets_lock:
        if value in _secrets:
            return
        _secrets.add(value)
        ordered = sorted(_secrets, key=len, reverse=True)  # longest first: no partial leftovers
        _secret_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def register_settings_secrets(model: BaseModel) -> None:
    """Register every ``SecretStr`` in ``model`` and its sub-models (the loaded settings)."""
    for name in type(model).model_fields:
        _register_value(getattr(model, name))


def _register_value(value: object) -> None:
    if isinstance(value, SecretStr):
        register_secret(value.get_secret_value())
    elif isinstance(value, BaseModel):
        register_settings_secrets(value)
    elif isinstance(value, list | tuple):
        for item in value:
            _register_value(item)


def redact(text: str) -> str:
    """``text`` without registered secrets and secret-shaped strings."""
    pattern = _secret_pattern
    if pattern is not None:
        text = pattern.sub(_REDACTED, text)
    for shape, replacement in _SHAPES:
        text = shape.sub(replacement, text)
    return text


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Set context fields (see ``CONTEXT_FIELDS``) for the lines logged inside the block."""
    tokens = [(_context[name], _context[name].set(value)) for name, value in fields.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def current_context() -> dict[str, Any]:
    """The context fields set now, to carry into a worker thread."""
    return {name: var.get() for name, var in _context.items()}


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _context.items():
            if not hasattr(record, name):
                setattr(record, name, var.get())
        return True


class TextFormatter(logging.Formatter):
    """``time level logger [run=… account=… stage=…] message``, redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{name}={value}"
            for name in CONTEXT_FIELDS
            if (value := getattr(record, name, None)) is not None
        )
        if context:
            head, sep, rest = line.partition(": ")
            line = f"{head} [{context}]{sep}{rest}"
        return redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, every context field present, redacted."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            entry[name] = getattr(record, name, None)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Redacted as rendered text: a secret can't hide in any field or traceback.
        return redact(json.dumps(entry, ensure_ascii=False, default=str))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each line."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure(
    *, fmt: str = "text", level: int | str = logging.WARNING, stream: TextIO | None = None
) -> None:
    """Route all logging (ours and libraries') to ``stream`` (stderr) as text or json.

    Replaces the handler a previous call installed, and no other.
    """
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    handler.set_name("invoicesync")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "invoicesync":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Migrations announce themselves at INFO on every start: only worth it at DEBUG.
    logging.getLogger("alembic").setLevel(
        logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING
    )
