"""Shared fixtures: a clean environment, and real databases (SQLite file, local PostgreSQL)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

# Real servers as fixtures: Dovecot IMAP with its OAuth2 token server; an OpenAI-compatible API.
pytest_plugins = ["tests.dovecot", "tests.link_site", "tests.openai_server"]

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus"
EXAMPLES = ROOT / "examples"
PG_ADMIN_URL = os.environ.get(
    "INVOICESYNC_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No INVOICESYNC_* variable of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("INVOICESYNC_") or name == "OPENAI_API_KEY":
            monkeypatch.delenv(name)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"invoicesync_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database the project supports: a SQLite file and a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'invoicesync.db'}"
    return str(request.getfixturevalue("pg_url"))


def write_config(path: Path, *, db_url: str, storage: Path, maildir: Path, extra: str = "") -> Path:
    """A config file for one local account named ``sample``."""
    path.write_text(
        f"""
[database]
url = "{db_url}"
[storage]
dir = "{storage}"
{extra}
[[accounts]]
name = "sample"
maildir = "{maildir}"
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def silent_server() -> Iterator[tuple[str, int]]:
    """A loopback TCP server that accepts connections and never says a word."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            accepted.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()
    finally:
        stop.set()
        thread.join(timeout=2)
        for connection in accepted:
            connection.close()
        listener.close()
