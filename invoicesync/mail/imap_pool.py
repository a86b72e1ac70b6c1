"""A bounded pool of IMAP connections for one account.

- At most ``max_connections`` connections exist at once; a caller waits for one.
- A connection taken after idling more than ``NOOP_AFTER`` seconds is checked with
  NOOP; one idle longer than ``idle_timeout`` is closed instead of reused. Dead
  connections are closed and discarded, never handed out.
- Opening retries transient failures with exponential backoff (2, 4, 8, 16, 32 s;
  at most 5 attempts; the count starts afresh for every open). Authentication
  failures are fatal and never retried.
- A connection that failed during use is discarded: its state is unknown.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from invoicesync.errors import FatalError, InvoiceSyncError, TransientError
from invoicesync.mail.imap_client import ImapConnection

__all__ = ["NOOP_AFTER", "RECONNECT_DELAYS", "ImapPool", "PoolStats"]

log = logging.getLogger(__name__)

NOOP_AFTER = 30.0
RECONNECT_DELAYS = (2.0, 4.0, 8.0, 16.0, 32.0)


@dataclass
class PoolStats:
    opened: int = 0
    reused: int = 0
    discarded: int = 0
    failed: int = 0


class ImapPool:
    def __init__(
        self,
        opener: Callable[[], ImapConnection],
        *,
        max_connections: int,
        idle_timeout: float,
        cancel: threading.Event,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._open = opener
        self._slots = threading.BoundedSemaphore(max_connections)
        self._idle: list[ImapConnection] = []
        self._in_use: set[ImapConnection] = set()
        self._lock = threading.Lock()
        self._idle_timeout = idle_timeout
        self._cancel = cancel
        self._time_scale = time_scale
        self._clock = clock
        self.stats = PoolStats()

    @contextmanager
    def connection(self) -> Iterator[ImapConnection]:
        """A healthy connection for the duration of the block."""
        while not self._slots.acquire(timeout=0.5):
            if self._cancel.is_set():
                raise TransientError("stopping: no IMAP connection taken", stage="imap")
        try:
            connection = self._take()
            with self._lock:
                self._in_use.add(connection)
            try:
                yield connection
            except BaseException:
                # Whatever failed, the session's state is unknown now: never hand it out again.
                self._discard(connection)
                raise
            else:
                with self._lock:
                    self._in_use.discard(connection)
                    self._idle.append(connection)
        finally:
            self._slots.release()

    def _take(self) -> ImapConnection:
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._open_with_backoff()
            idle = self._clock() - connection.last_used
            if idle > self._idle_timeout:
                self._discard(connection)
                continue
            if idle > NOOP_AFTER:
                try:
                    connection.noop()
                except InvoiceSyncError as exc:
                    self._discard(connection)
                    if isinstance(exc, TransientError):
                        continue
                    raise
            self.stats.reused += 1
            return connection

    def _open_with_backoff(self) -> ImapConnection:
        for attempt, delay in enumerate(RECONNECT_DELAYS, start=1):
            try:
                connection = self._open()
            except FatalError:
                self.stats.failed += 1
                raise
            except TransientError as exc:
                self.stats.failed += 1
                if attempt == len(RECONNECT_DELAYS) or self._cancel.is_set():
                    raise
                log.warning(
                    "stage=imap_connect attempt=%d/%d error=%s:%s next_in=%.0fs",
                    attempt,
                    len(RECONNECT_DELAYS),
                    exc.kind,
                    exc,
                    delay,
                )
                self._cancel.wait(delay * self._time_scale)
                continue
            self.stats.opened += 1
            return connection
        raise AssertionError("unreachable")  # pragma: no cover

    def _discard(self, connection: ImapConnection) -> None:
        with self._lock:
            self._in_use.discard(connection)
        connection.close()
        self.stats.discarded += 1

    def close_all(self) -> None:
        """Close every connection, in use or idle (the watchdog calls this from its thread)."""
        with self._lock:
            connections = [*self._idle, *self._in_use]
            self._idle.clear()
        for connection in connections:
            connection.close()

    def logout_all(self) -> None:
        """End idle sessions politely at the end of an account's work."""
        with self._lock:
            connections, self._idle = self._idle, []
        for connection in connections:
            connection.logout()
