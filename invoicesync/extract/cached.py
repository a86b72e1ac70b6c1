"""The model's readings, cached by document sha256 + model + prompt version.

A model call costs money and minutes; its answer for the same bytes, model and
prompt does not change. ``CachedReader`` asks the ``ResultStore`` first and stores
each new reading as soon as it arrives, so a crash or a failed commit afterwards
costs no second call. Threads asking for the same key at once wait for the first
(one call, not one per mail carrying the same PDF).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from invoicesync.errors import OperationTimeout, TransientError
from invoicesync.models import CachedReading, CacheKey, Invoice
from invoicesync.resilience.timeouts import Deadline

__all__ = ["CacheKey", "CachedReader", "CachedReading", "Reader", "ResultStore"]

log = logging.getLogger(__name__)


class ResultStore(Protocol):
    """Where readings are kept (``store.cache.DatabaseResultStore``)."""

    def get(self, key: CacheKey) -> CachedReading | None: ...

    def put(self, key: CacheKey, reading: CachedReading) -> None: ...


class _Reading(Protocol):
    invoice: Invoice | None
    prompt_tokens: int
    completion_tokens: int


class Reader(Protocol):
    """An extractor that reports what each reading cost (``OpenAIExtractor``)."""

    name: str
    model: str

    def read(
        self, data: bytes, *, filename: str | None = None, deadline: Deadline | None = None
    ) -> _Reading: ...

    def close(self) -> None: ...


class CachedReader:
    """An ``Extractor`` over ``reader`` that asks ``store`` before the model."""

    def __init__(self, reader: Reader, store: ResultStore, *, prompt_version: str) -> None:
        self.reader = reader
        self.name = reader.name
        self._store = store
        self._prompt_version = prompt_version
        self._lock = threading.Lock()
        self._in_flight: dict[CacheKey, tuple[threading.Lock, list[int]]] = {}
        self.hits = 0

    def close(self) -> None:
        self.reader.close()

    def extract(
        self, data: bytes, *, filename: str | None = None, deadline: Deadline | None = None
    ) -> Invoice | None:
        return self.extract_with(
            hashlib.sha256(data).hexdigest(),
            lambda: self.reader.read(data, filename=filename, deadline=deadline),
            deadline=deadline,
        )

    def extract_with(
        self, sha256: str, read: Callable[[], _Reading], *, deadline: Deadline | None = None
    ) -> Invoice | None:
        """The cached reading of the document ``sha256``, else ``read()``'s, then cached."""
        key = CacheKey(sha256, self.reader.model, self._prompt_version)
        with self._only_one(key, deadline or Deadline.never()):
            cached = self._get(key)
            if cached is not None:
                with self._lock:
                    self.hits += 1
                return None if cached.invoice is None else cached.invoice.model_copy(deep=True)
            reading = read()
            self._put(key, reading)
            return reading.invoice

    @contextmanager
    def _only_one(self, key: CacheKey, deadline: Deadline) -> Iterator[None]:
        """Hold the key's lock: a second thread with the same key waits for the first."""
        with self._lock:
            lock, users = self._in_flight.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        try:
            remaining = deadline.remaining()
            if not lock.acquire(timeout=-1 if math.isinf(remaining) else max(0.0, remaining)):
                raise OperationTimeout(
                    "waited too long for another thread reading the same document", stage="extract"
                )
            try:
                yield
            finally:
                lock.release()
        finally:
            with self._lock:
                users[0] -= 1
                if not users[0]:
                    del self._in_flight[key]

    def _get(self, key: CacheKey) -> CachedReading | None:
        try:
            return self._store.get(key)
        except TransientError as exc:  # a cache that can't be read is a miss, not a failure
            log.warning("model cache unavailable (%s): asking the model", exc)
            return None

    def _put(self, key: CacheKey, reading: _Reading) -> None:
        stored = CachedReading(reading.invoice, reading.prompt_tokens, reading.completion_tokens)
        try:
            self._store.put(key, stored)
        except TransientError as exc:  # the reading is still used; only the cache misses it
            log.warning("model cache not written (%s)", exc)
