"""Engine and session factory, migrations, and the one transaction helper.

SQLAlchemy errors are translated here into the project's tree: a locked SQLite
file, a PostgreSQL serialisation failure or a dropped connection are transient;
anything else from the database is a bug and propagates as is.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from invoicesync.errors import ConfigError, NetworkError, StoreBusyError

__all__ = ["Database", "dialect_insert", "translate_db_errors"]

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
# A PostgreSQL advisory lock key: two processes starting on a fresh database
# must not both try to create the tables.
_MIGRATION_LOCK = 0x1A7E_5C


@contextlib.contextmanager
def translate_db_errors() -> Iterator[None]:
    """Map transient database failures onto ``TransientError`` subclasses."""
    try:
        yield
    except OperationalError as exc:
        message = str(exc.orig) if exc.orig is not None else str(exc)
        if "locked" in message or "busy" in message:
            raise StoreBusyError(f"database busy: {message}", stage="store") from exc
        raise NetworkError(
            f"database unavailable: {message.splitlines()[0]}", stage="store"
        ) from exc
    except DBAPIError as exc:
        # 40001 serialization_failure, 40P01 deadlock_detected: retry the item.
        code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if code in {"40001", "40P01"}:
            raise StoreBusyError(f"database conflict ({code})", stage="store") from exc
        if exc.connection_invalidated:
            raise NetworkError("database connection lost", stage="store") from exc
        raise


def head_revision() -> str:
    """The newest migration's revision id (they are numbered ``0001_…``, ``0002_…``, in line)."""
    names = sorted(p.name for p in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
    return names[-1][:4]


def dialect_insert(session: Session, table: Any) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT (both SQLite and PostgreSQL do)."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # busy_timeout makes two writers queue instead of failing at once; it comes first,
    # since switching a new database to WAL needs its lock too (processes starting at
    # once on a fresh file). WAL lets a reader (status, export) work while a run writes.
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Database:
    """One engine and session factory for a database URL."""

    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ConfigError("not a valid SQLAlchemy URL", key="database.url") from None
        self.url = parsed
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine: Engine = create_engine(
                parsed,
                pool_pre_ping=not self.is_sqlite,
                connect_args={"timeout": 30} if self.is_sqlite else {"connect_timeout": 10},
            )
        except (ArgumentError, ImportError) as exc:
            shown = parsed.render_as_string(hide_password=True)
            raise ConfigError(
                f"cannot use this database ({shown}): {type(exc).__name__}", key="database.url"
            ) from None
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits atomically on exit, or rolls back on any error."""
        with translate_db_errors(), self._sessions() as session, session.begin():
            yield session

    def session(self) -> Session:
        """A plain session for reads."""
        return self._sessions()

    def upgrade(self) -> None:
        """Apply pending migrations; safe when several processes start at once.

        Every command starts with this, so the usual case (already at head) is one
        query and no Alembic import: that keeps a run with nothing to do fast.
        """
        with translate_db_errors():
            if self._at_head():
                return
        from alembic import command
        from alembic.config import Config as AlembicConfig

        with translate_db_errors(), self._migration_lock(), self.engine.begin() as connection:
            config = AlembicConfig()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def _at_head(self) -> bool:
        with self.engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                return False
            current = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        return [row[0] for row in current] == [head_revision()]

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        if self.is_sqlite:
            database = self.url.database
            if not database or database == ":memory:":
                yield
                return
            with open(f"{database}.migrate.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield
            return
        with self.engine.connect() as connection:
            _advisory(connection, "pg_advisory_lock")
            try:
                yield
            finally:
                _advisory(connection, "pg_advisory_unlock")

    def dispose(self) -> None:
        self.engine.dispose()


def _advisory(connection: Connection, function: str) -> None:
    connection.execute(text(f"SELECT {function}(:key)"), {"key": _MIGRATION_LOCK})
    connection.commit()
