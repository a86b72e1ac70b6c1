"""CachedReader: the store first, one reading per key even from many threads."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from invoicesync.errors import OperationTimeout, StoreBusyError
from invoicesync.extract.cached import CachedReader, CachedReading, CacheKey
from invoicesync.models import Invoice, Provenance
from invoicesync.resilience.timeouts import Deadline


@dataclass
class _Reading:
    invoice: Invoice | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Reader:
    name = "openai"
    model = "m1"

    def __init__(self, delay: float = 0.0, answer: str | None = "A-1") -> None:
        self.delay = delay
        self.answer = answer
        self.reads = 0
        self._lock = threading.Lock()

    def read(
        self, data: bytes, *, filename: str | None = None, deadline: Deadline | None = None
    ) -> _Reading:
        with self._lock:
            self.reads += 1
        time.sleep(self.delay)
        if self.answer is None:
            return _Reading(None, 50, 5)
        invoice = Invoice(
            invoice_number=self.answer,
            provenance=Provenance(extractor="openai", model=self.model, prompt_tokens=100),
        )
        return _Reading(invoice, 100, 20)

    def close(self) -> None:
        pass


class _Store:
    def __init__(self, *, broken: bool = False) -> None:
        self.entries: dict[CacheKey, CachedReading] = {}
        self.broken = broken

    def get(self, key: CacheKey) -> CachedReading | None:
        if self.broken:
            raise StoreBusyError("database busy", stage="store")
        return self.entries.get(key)

    def put(self, key: CacheKey, reading: CachedReading) -> None:
        if self.broken:
            raise StoreBusyError("database busy", stage="store")
        self.entries[key] = reading


def test_second_extraction_of_the_same_bytes_is_a_hit() -> None:
    reader, store = _Reader(), _Store()
    cached = CachedReader(reader, store, prompt_version="p1")
    first = cached.extract(b"%PDF-1 same")
    second = cached.extract(b"%PDF-1 same")
    assert first is not None and second is not None
    assert second.invoice_number == "A-1" and second is not first
    assert (reader.reads, cached.hits) == (1, 1)
    [(key, entry)] = store.entries.items()
    assert (key.model, key.prompt_version, len(key.sha256)) == ("m1", "p1", 64)
    assert (entry.prompt_tokens, entry.completion_tokens) == (100, 20)


def test_model_and_prompt_version_are_part_of_the_key() -> None:
    reader, store = _Reader(), _Store()
    CachedReader(reader, store, prompt_version="p1").extract(b"doc")
    CachedReader(reader, store, prompt_version="p2").extract(b"doc")
    reader.model = "m2"
    CachedReader(reader, store, prompt_version="p2").extract(b"doc")
    CachedReader(reader, store, prompt_version="p2").extract(b"other doc")
    assert reader.reads == 4 and len(store.entries) == 4


def test_not_an_invoice_is_cached_too() -> None:
    reader, store = _Reader(answer=None), _Store()
    cached = CachedReader(reader, store, prompt_version="p1")
    assert cached.extract(b"newsletter") is None
    assert cached.extract(b"newsletter") is None
    assert (reader.reads, cached.hits) == (1, 1)


def test_threads_with_the_same_document_wait_for_one_reading() -> None:
    reader, store = _Reader(delay=0.2), _Store()
    cached = CachedReader(reader, store, prompt_version="p1")
    barrier = threading.Barrier(5)
    results: list[Invoice | None] = []

    def work() -> None:
        barrier.wait()
        results.append(cached.extract(b"shared pdf"))

    threads = [threading.Thread(target=work) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(results) == 5 and all(r is not None for r in results)
    assert (reader.reads, cached.hits) == (1, 4)
    assert cached._in_flight == {}  # no lock left behind


def test_different_documents_are_read_in_parallel() -> None:
    reader = _Reader(delay=0.3)
    cached = CachedReader(reader, _Store(), prompt_version="p1")
    started = time.monotonic()
    threads = [
        threading.Thread(target=cached.extract, args=(f"doc {n}".encode(),)) for n in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert reader.reads == 4 and time.monotonic() - started < 1.0


def test_a_broken_store_is_a_miss_not_a_failure() -> None:
    reader = _Reader()
    cached = CachedReader(reader, _Store(broken=True), prompt_version="p1")
    assert cached.extract(b"doc") is not None
    assert cached.extract(b"doc") is not None
    assert (reader.reads, cached.hits) == (2, 0)


def test_waiting_for_another_thread_respects_the_deadline() -> None:
    reader = _Reader(delay=1.0)
    cached = CachedReader(reader, _Store(), prompt_version="p1")
    holder = threading.Thread(target=cached.extract, args=(b"slow",))
    holder.start()
    time.sleep(0.1)
    with pytest.raises(OperationTimeout):
        cached.extract(b"slow", deadline=Deadline(0.1))
    holder.join(5)
    assert reader.reads == 1
