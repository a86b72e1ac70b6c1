"""invoicesync: invoices arriving by email → structured records in a SQL database.

The public surface is small: ``run`` one pass over the configured accounts,
``load_settings`` / ``Settings`` for configuration, and the error tree.
Heavy modules (SQLAlchemy, pypdf, lxml) are imported only when a run needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from invoicesync.config import Settings, load_settings
from invoicesync.errors import (
    AuthError,
    BadInputError,
    ConfigError,
    FatalError,
    InvoiceSyncError,
    QuotaError,
    RunAborted,
    TransientError,
)

if TYPE_CHECKING:
    from invoicesync.pipeline.runner import RunResult

__all__ = [
    "AuthError",
    "BadInputError",
    "ConfigError",
    "FatalError",
    "InvoiceSyncError",
    "QuotaError",
    "RunAborted",
    "Settings",
    "TransientError",
    "load_settings",
    "run",
]


def run(settings: Settings) -> RunResult:
    """Process every configured account once and return the run's summary."""
    from invoicesync.pipeline.runner import Runner
    from invoicesync.store.db import Database

    database = Database(settings.database.url)
    try:
        database.upgrade()
        return Runner(settings, database).run()
    finally:
        database.dispose()
