"""Deadlines passed down from the run to each account and each operation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["Deadline"]


class Deadline:
    """A point in monotonic time; ``child`` gives a nested deadline that never outlives its parent.

    Every wait and socket timeout is ``deadline.timeout(own_timeout)``: the smaller of
    the operation's own timeout and the time left.
    """

    def __init__(
        self,
        seconds: float | None,
        *,
        parent: Deadline | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.expires_at = math.inf if seconds is None else clock() + seconds
        if parent is not None:
            self.expires_at = min(self.expires_at, parent.expires_at)

    @classmethod
    def never(cls) -> Deadline:
        return cls(None)

    def child(self, seconds: float | None) -> Deadline:
        return Deadline(seconds, parent=self, clock=self._clock)

    def remaining(self) -> float:
        """Seconds left, never negative (``inf`` for no deadline)."""
        return max(0.0, self.expires_at - self._clock())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0

    def timeout(self, own: float | None) -> float:
        """The timeout for one operation: its own limit, capped by the time left."""
        left = self.remaining()
        return left if own is None else min(own, left)
