"""The model-result cache on real SQLite and PostgreSQL: keys, TTL, purge, upsert."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal

import pytest
from sqlalchemy import func, select, update

from invoicesync.extract.cached import CachedReading, CacheKey
from invoicesync.models import Invoice, Provenance
from invoicesync.store.cache import DatabaseResultStore
from invoicesync.store.db import Database
from invoicesync.store.schema import ExtractionCache

KEY = CacheKey("ab" * 32, "gpt-test", "p1")
INVOICE = Invoice(
    invoice_number="RE-1",
    gross_total=Decimal("119.00"),
    provenance=Provenance(extractor="openai", model="gpt-test", prompt_tokens=100),
)


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.upgrade()
    yield database
    database.dispose()


def _age(database: Database, hours: float) -> None:
    with database.transaction() as session:
        session.execute(
            update(ExtractionCache).values(
                created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)
            )
        )


def test_a_reading_comes_back_exactly(database: Database) -> None:
    store = DatabaseResultStore(database, ttl_hours=24)
    assert store.get(KEY) is None
    store.put(KEY, CachedReading(INVOICE, 100, 20))
    hit = store.get(KEY)
    assert hit is not None and hit.invoice == INVOICE
    assert (hit.prompt_tokens, hit.completion_tokens) == (100, 20)
    assert hit.invoice is not None and hit.invoice.gross_total == Decimal("119.00")


def test_not_an_invoice_is_stored_as_none(database: Database) -> None:
    store = DatabaseResultStore(database, ttl_hours=24)
    store.put(KEY, CachedReading(None, 70, 3))
    hit = store.get(KEY)
    assert hit is not None and hit.invoice is None and hit.prompt_tokens == 70


def test_each_part_of_the_key_counts(database: Database) -> None:
    store = DatabaseResultStore(database, ttl_hours=24)
    store.put(KEY, CachedReading(INVOICE, 1, 1))
    for other in (
        CacheKey("cd" * 32, KEY.model, KEY.prompt_version),
        CacheKey(KEY.sha256, "gpt-other", KEY.prompt_version),
        CacheKey(KEY.sha256, KEY.model, "p2"),
    ):
        assert store.get(other) is None


def test_a_second_put_replaces_the_entry(database: Database) -> None:
    store = DatabaseResultStore(database, ttl_hours=24)
    store.put(KEY, CachedReading(None, 1, 1))
    store.put(KEY, CachedReading(INVOICE, 2, 2))
    hit = store.get(KEY)
    assert hit is not None and hit.invoice == INVOICE and hit.prompt_tokens == 2
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(ExtractionCache)) == 1


def test_entries_past_the_ttl_are_ignored_and_purged(database: Database) -> None:
    store = DatabaseResultStore(database, ttl_hours=24)
    store.put(KEY, CachedReading(INVOICE, 1, 1))
    fresh = CacheKey("cd" * 32, KEY.model, KEY.prompt_version)
    _age(database, 25)
    store.put(fresh, CachedReading(None, 1, 1))
    assert store.get(KEY) is None
    assert store.get(fresh) is not None
    assert DatabaseResultStore(database, ttl_hours=30).get(KEY) is not None
    assert store.purge() == 1
    assert DatabaseResultStore(database, ttl_hours=30).get(KEY) is None
    assert store.get(fresh) is not None
