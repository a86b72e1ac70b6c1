"""Client-side pacing for a model endpoint's per-minute budgets.

The server's 429 answers (``RateLimitedError``, retried with Retry-After) are the
backstop; staying under ``requests_per_minute`` and ``tokens_per_minute`` here
avoids them, so that parallel workers do not burn their retries and the run's
deadline on rejected calls.

Each budget is a token bucket holding one minute's worth (its capacity is the
per-minute limit), refilling continuously at limit/60 per second and starting
full; 0 means unlimited. ``acquire`` takes one request and the estimated tokens
from both buckets at once, or from neither. A request larger than the whole
token capacity goes through as soon as the bucket is full and drives it
*negative*: the debt is paid off by refilling before anyone else is admitted, so
the budget is still honoured over time. ``settle`` corrects the estimate later.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from invoicesync.errors import OperationTimeout, RunAborted
from invoicesync.resilience.timeouts import Deadline

__all__ = ["RateLimiter"]

#: Tolerance for float rounding in the refill, so a wait never ends in a tiny extra sleep.
_EPSILON = 1e-6


class _Bucket:
    def __init__(self, name: str, per_minute: int) -> None:
        if per_minute < 0:
            raise ValueError(f"{name} must be >= 0, got {per_minute}")
        self.name = name
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity

    def refill(self, elapsed: float) -> None:
        self.level = min(self.capacity, self.level + elapsed * self.rate)

    def wait_for(self, amount: int) -> float:
        """Seconds until ``amount`` fits (oversized: until full); 0 if unlimited."""
        if not self.capacity:
            return 0.0
        deficit = min(float(amount), self.capacity) - self.level
        return deficit / self.rate if deficit > _EPSILON else 0.0

    def take(self, amount: int) -> None:
        if self.capacity:
            self.level -= amount


class RateLimiter:
    """Thread-safe pacing for one endpoint; ``cancel`` (the stop switch's event) ends waits."""

    def __init__(
        self,
        *,
        requests_per_minute: int,
        tokens_per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        cancel: threading.Event | None = None,
    ) -> None:
        self._requests = _Bucket("requests_per_minute", requests_per_minute)
        self._tokens = _Bucket("tokens_per_minute", tokens_per_minute)
        self._clock = clock
        self._cancel = cancel or threading.Event()
        self._lock = threading.Lock()
        self._last = clock()

    @property
    def unlimited(self) -> bool:
        return not self._requests.capacity and not self._tokens.capacity

    def acquire(self, tokens: int, *, deadline: Deadline | None = None) -> float:
        """Block until one request of about ``tokens`` tokens fits both budgets.

        Returns the seconds waited. Raises ``OperationTimeout`` at once, without
        waiting, if the wait would outlive ``deadline``, and ``RunAborted`` if
        ``cancel`` is set while waiting.
        """
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        if self.unlimited:
            return 0.0
        start = self._clock()
        while True:
            with self._lock:
                self._refill()
                wait, bucket = max(
                    (self._requests.wait_for(1), self._requests),
                    (self._tokens.wait_for(tokens), self._tokens),
                    key=lambda pair: pair[0],
                )
                if wait <= 0:
                    self._requests.take(1)
                    self._tokens.take(tokens)
                    return self._clock() - start
            # Others may take the budget while we sleep: the loop recomputes the wait.
            left = deadline.remaining() if deadline is not None else float("inf")
            if wait > left:
                raise OperationTimeout(
                    f"{bucket.name} budget: would wait {wait:.1f}s, {left:.1f}s left"
                )
            if self._cancel.wait(wait):
                raise RunAborted(f"stopped while waiting for the {bucket.name} budget")

    def settle(self, estimated: int, actual: int) -> None:
        """After the answer: correct the token budget by ``actual - estimated`` (may refund)."""
        if not self._tokens.capacity:
            return
        with self._lock:
            self._refill()
            self._tokens.level = min(
                self._tokens.capacity, self._tokens.level - (actual - estimated)
            )

    def _refill(self) -> None:
        now = self._clock()
        elapsed, self._last = max(0.0, now - self._last), now
        self._requests.refill(elapsed)
        self._tokens.refill(elapsed)
