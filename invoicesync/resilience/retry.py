"""Retry policies over tenacity, built once from ``[retries]``.

Only ``TransientError`` is retried. The wait before attempt n+1 is exponential
with jitter, ``min(backoff_max, backoff_initial * 2**(n-1) + uniform(0, jitter))``
seconds, unless the error carries a server-requested ``retry_after``, which is
honoured but clamped to ``retry_after_max``. Retrying stops after ``attempts``
attempts *or* as soon as the next wait would outlive the deadline, whichever
comes first; the last error is then raised unchanged.

``time_scale`` multiplies the actual sleeps (never the computed delays, which are
logged): tests set it to 0 for instant retries without patching ``sleep``.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.stop import stop_base

from invoicesync.config import RetrySettings
from invoicesync.errors import RateLimitedError, TransientError
from invoicesync.resilience.timeouts import Deadline

__all__ = ["RetryPolicy"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryPolicy:
    """A retry policy for one stage; ``call`` runs a function under it."""

    def __init__(
        self,
        settings: RetrySettings,
        *,
        stage: str,
        attempts: int | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.stage = stage
        self.attempts = attempts or settings.attempts
        # Sleeping on an event lets the watchdog or a signal cut a backoff short.
        self._cancel = cancel or threading.Event()

    def delay(self, attempt: int, error: BaseException | None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if isinstance(error, RateLimitedError) and error.retry_after is not None:
            return max(0.0, min(error.retry_after, self.settings.retry_after_max))
        backoff: float = self.settings.backoff_initial * 2.0 ** (attempt - 1)
        backoff += random.uniform(0, self.settings.jitter)
        return min(self.settings.backoff_max, backoff)

    def call(self, fn: Callable[[], T], *, deadline: Deadline | None = None) -> T:
        limit = deadline or Deadline.never()

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            return self.delay(state.attempt_number, error)

        class OutOfTime(stop_base):
            def __call__(self, state: RetryCallState) -> bool:
                return state.upcoming_sleep >= limit.remaining()

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning(
                "stage=%s attempt=%d/%d error=%s next_in=%.1fs",
                self.stage,
                state.attempt_number,
                self.attempts,
                _describe(error),
                state.upcoming_sleep,
            )

        retrying = Retrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(self.attempts) | OutOfTime(),
            wait=wait,
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(fn)

    def _sleep(self, seconds: float) -> None:
        self._cancel.wait(seconds * self.settings.time_scale)


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "-"
    kind = getattr(error, "kind", type(error).__name__)
    return f"{kind}:{error}"
