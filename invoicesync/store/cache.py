"""The model-result cache in the database (table ``extraction_cache``).

In the database rather than on local disk so that every worker sharing it also
shares what has been paid for. Entries older than ``ttl_hours`` are ignored and
purged once per run.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, select

from invoicesync.models import CachedReading, CacheKey, Invoice
from invoicesync.store.db import Database, dialect_insert
from invoicesync.store.schema import ExtractionCache

__all__ = ["DatabaseResultStore"]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class DatabaseResultStore:
    """``extract.cached.ResultStore`` over the run's database."""

    def __init__(self, database: Database, *, ttl_hours: float) -> None:
        self._db = database
        self._ttl = dt.timedelta(hours=ttl_hours)

    def get(self, key: CacheKey) -> CachedReading | None:
        with self._db.transaction() as session:
            row = session.execute(
                select(
                    ExtractionCache.result,
                    ExtractionCache.prompt_tokens,
                    ExtractionCache.completion_tokens,
                ).where(
                    ExtractionCache.sha256 == key.sha256,
                    ExtractionCache.model == key.model,
                    ExtractionCache.prompt_version == key.prompt_version,
                    ExtractionCache.created_at >= _now() - self._ttl,
                )
            ).first()
        if row is None:
            return None
        invoice = None if row[0] is None else Invoice.model_validate(row[0])
        return CachedReading(invoice, int(row[1]), int(row[2]))

    def put(self, key: CacheKey, reading: CachedReading) -> None:
        values = {
            "result": None if reading.invoice is None else reading.invoice.model_dump(mode="json"),
            "prompt_tokens": reading.prompt_tokens,
            "completion_tokens": reading.completion_tokens,
            "created_at": _now(),
        }
        with self._db.transaction() as session:
            session.execute(
                dialect_insert(session, ExtractionCache)
                .values(sha256=key.sha256, model=key.model, prompt_version=key.prompt_version)
                .values(**values)
                .on_conflict_do_update(
                    index_elements=["sha256", "model", "prompt_version"], set_=values
                )
            )

    def purge(self) -> int:
        """Delete expired entries; how many."""
        with self._db.transaction() as session:
            result = session.execute(
                delete(ExtractionCache).where(ExtractionCache.created_at < _now() - self._ttl)
            )
            return int(getattr(result, "rowcount", 0) or 0)
