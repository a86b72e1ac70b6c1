"""Circuit breakers, one per external endpoint (IMAP host, download host, model endpoint).

After ``threshold`` consecutive transient failures the breaker opens: calls fail
at once with ``CircuitOpenError`` for ``cooldown`` seconds, and the work for
that endpoint is left pending (not failed) for a later run. Then one trial call
is let through (half-open): success closes the breaker, failure opens it again.

A small module rather than pybreaker or circuitbreaker: we need exactly three
things they make awkward — count only ``TransientError`` (a fatal error says
nothing about the endpoint's health), an injectable clock for tests, and one
registry keyed by endpoint that lives for one run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar

from invoicesync.config import BreakerSettings
from invoicesync.errors import TransientError

__all__ = ["BreakerState", "Breakers", "CircuitBreaker", "CircuitOpenError"]

T = TypeVar("T")


class CircuitOpenError(TransientError):
    """The endpoint's breaker is open: leave the work pending, don't count an attempt."""

    kind = "circuit_open"


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        endpoint: str,
        settings: BreakerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state()

    def _state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.settings.cooldown:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def _admit(self) -> None:
        with self._lock:
            state = self._state()
            if state is BreakerState.CLOSED:
                return
            if state is BreakerState.HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return
            raise CircuitOpenError(
                f"circuit open for {self.endpoint} after {self._failures} consecutive failures",
                stage="breaker",
            )

    def _record(self, *, ok: bool) -> None:
        with self._lock:
            self._trial_running = False
            if ok:
                self._failures, self._opened_at = 0, None
                return
            self._failures += 1
            if self._opened_at is not None or self._failures >= self.settings.threshold:
                self._opened_at = self._clock()

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` through the breaker; only ``TransientError`` counts as a failure."""
        self._admit()
        try:
            result = fn()
        except TransientError:
            self._record(ok=False)
            raise
        except BaseException:
            # Not the endpoint's fault (bad input, a bug, a stop): release a trial slot only.
            with self._lock:
                self._trial_running = False
            raise
        self._record(ok=True)
        return result


class Breakers:
    """The breakers of one run, created on first use per endpoint."""

    def __init__(
        self, settings: BreakerSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def for_endpoint(self, endpoint: str) -> CircuitBreaker:
        with self._lock:
            if endpoint not in self._breakers:
                self._breakers[endpoint] = CircuitBreaker(
                    endpoint, self.settings, clock=self._clock
                )
            return self._breakers[endpoint]

    def open_endpoints(self) -> list[str]:
        return [e for e, b in self._breakers.items() if b.state is not BreakerState.CLOSED]
