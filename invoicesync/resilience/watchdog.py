"""The run's stop switch: a watchdog thread for the ten-minute limit, and signal handling.

Cancellation is cooperative first, forceful last (a thread cannot interrupt
another thread's blocking socket read):

1. at ``timeout`` the watchdog sets the cancel event — every stage checks it
   between items, every backoff sleep wakes on it — and calls the registered
   closers, which close open connections so blocked reads fail at once;
2. after ``grace`` more seconds, if the run still has not finished, it calls
   ``on_abort`` (which marks the run row ``aborted``) and ends the process with
   exit code 4. Every item commits atomically, so the database is consistent
   whatever the moment.

SIGTERM and SIGINT set the same event (the current item finishes and commits);
a second signal exits at once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

from invoicesync.errors import RunAborted

__all__ = ["StopSwitch", "Watchdog"]

log = logging.getLogger(__name__)
#: Seconds the watchdog waits for the run row to be marked aborted before exiting anyway.
ABORT_RECORD_TIMEOUT = 5.0


class StopSwitch:
    """Why the run must stop, shared by the watchdog, the signal handlers and the stages."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._stop: RunAborted | None = None
        # Reentrant: the signal handler runs in the main thread between two bytecodes,
        # maybe while that very thread holds the lock (in ``register``, say).
        self._lock = threading.RLock()
        self._closers: dict[int, Callable[[], None]] = {}
        self._next = 0
        # Items in flight, without a lock: taken and read on every item, also by the
        # signal handler; single dict operations are atomic under the GIL.
        self._working: dict[int, tuple[str, float]] = {}
        self._work_ids = itertools.count(1)

    def trip(self, stop: RunAborted, *, close: bool = True) -> bool:
        """Ask the run to stop; the first reason wins. Returns False if already tripped.

        ``close`` also drops the open connections (the watchdog's hard stop); a
        signal passes False so that the current item can finish and commit.
        """
        with self._lock:
            if self._stop is not None:
                return False
            self._stop = stop
            closers = list(self._closers.values()) if close else []
        self.event.set()
        for closer in closers:
            try:
                closer()
            except Exception:  # closing is best effort: the connection may be half-dead
                log.debug("closer failed during stop", exc_info=True)
        return True

    @property
    def tripped(self) -> RunAborted | None:
        return self._stop

    def raise_if_tripped(self) -> None:
        if self._stop is not None:
            raise RunAborted(
                self._stop.reason, exit_code=self._stop.exit_code, status=self._stop.status
            )

    def register(self, close: Callable[[], None]) -> int:
        """Remember how to close an open connection if the run is stopped; returns a handle."""
        with self._lock:
            self._next += 1
            self._closers[self._next] = close
            return self._next

    def unregister(self, handle: int) -> None:
        with self._lock:
            self._closers.pop(handle, None)

    @contextlib.contextmanager
    def working(self, item: str) -> Iterator[None]:
        """Mark ``item`` in flight while the block runs (named when the run is stopped)."""
        handle = next(self._work_ids)  # atomic under the GIL, as are the dict operations
        self._working[handle] = (item, time.monotonic())
        try:
            yield
        finally:
            self._working.pop(handle, None)

    def in_flight(self) -> list[str]:
        """The items being worked now, each with how long it has been going."""
        now = time.monotonic()
        items = sorted(self._working.copy().values(), key=lambda entry: entry[1])
        return [f"{item} for {now - since:.0f}s" for item, since in items]

    def install_signal_handlers(self, *, exit: Callable[[int], None] = os._exit) -> None:
        """SIGTERM/SIGINT: stop after the current item; a second signal exits at once."""

        def handle(signum: int, _frame: FrameType | None) -> None:
            code = 128 + signum  # 143 for SIGTERM, 130 for SIGINT
            name = signal.Signals(signum).name
            stop = RunAborted(f"stopped by {name}", exit_code=code, status="interrupted")
            if not self.trip(stop, close=False):
                working = ", ".join(self.in_flight()) or "nothing"
                log.warning("second %s: exiting now; in flight: %s", name, working)
                exit(code)

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, handle)


class Watchdog:
    """Trips the stop switch at ``timeout`` seconds, and ends the process ``grace`` later."""

    def __init__(
        self,
        switch: StopSwitch,
        *,
        timeout: float,
        grace: float,
        on_abort: Callable[[], None] = lambda: None,
        exit: Callable[[int], None] = os._exit,
    ) -> None:
        self.switch = switch
        self.timeout = timeout
        self.grace = grace
        self._on_abort = on_abort
        self._exit = exit
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def finish(self) -> None:
        """The run ended by itself: stand down."""
        self._done.set()

    def _watch(self) -> None:
        if self._done.wait(self.timeout):
            return
        reason = f"run exceeded timeouts.run = {self.timeout:g}s"
        working = self.switch.in_flight()
        log.error("watchdog: %s; stopping; in flight: %s", reason, ", ".join(working) or "nothing")
        self.switch.trip(RunAborted(reason, exit_code=4, status="aborted"))
        if self._done.wait(self.grace):
            return
        log.error("watchdog: run did not stop within %gs of grace; exiting", self.grace)
        # Recording the abort needs the database, which may be what hangs: bound it.
        recorder = threading.Thread(target=self._record_abort, name="watchdog-abort", daemon=True)
        recorder.start()
        recorder.join(ABORT_RECORD_TIMEOUT)
        self._exit(4)

    def _record_abort(self) -> None:
        try:
            self._on_abort()
        except Exception:
            log.exception("watchdog: could not record the abort")
