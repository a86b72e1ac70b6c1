"""``invoicesync schedule``: a cycle, a pause with jitter, again, until told to stop.

Cycles never overlap inside one process: the next one starts when the interval
since the last start has passed *and* the last one has finished (an overrun is
logged and the next cycle starts at once). Across processes the account leases
keep two schedulers from working one account at the same time; the second one
reports the account as skipped.

SIGTERM or SIGINT between cycles ends the loop at once; during a cycle the
cycle stops after its current item (the run's own graceful stop) and the loop
ends. Either way the scheduler exits 0: it was asked to stop and did so cleanly.
A second signal exits at once.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from invoicesync.errors import RunAborted
from invoicesync.resilience.watchdog import StopSwitch

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)


class Scheduler:
    """Runs ``cycle(switch)`` every ``every`` seconds (plus jitter) until stopped.

    ``cycle`` gets a fresh ``StopSwitch`` per cycle, which a signal trips, and
    returns the cycle's exit code.
    """

    def __init__(
        self,
        cycle: Callable[[StopSwitch], int],
        *,
        every: float,
        jitter: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cycle = cycle
        self.every = every
        self.jitter = jitter
        self._clock = clock
        self.stopping = threading.Event()
        self._current: StopSwitch | None = None
        self._lock = threading.Lock()
        self.cycles = 0

    def stop(self, reason: str, *, exit_code: int = 143) -> None:
        """End the loop: now if idle, after the current item if a cycle is running."""
        self.stopping.set()
        with self._lock:
            current = self._current
        if current is not None:
            current.trip(RunAborted(reason, exit_code=exit_code, status="interrupted"), close=False)

    def install_signal_handlers(self, *, exit: Callable[[int], None] = os._exit) -> None:
        def handle(signum: int, _frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if self.stopping.is_set():
                log.warning("second %s: exiting now", name)
                exit(128 + signum)
                return
            log.warning("%s: stopping the scheduler", name)
            self.stop(f"stopped by {name}", exit_code=128 + signum)

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, handle)

    def loop(self, *, once: bool = False) -> int:
        """Run cycles; the last cycle's exit code with ``once``, else 0 when stopped."""
        while not self.stopping.is_set():
            started = self._clock()
            switch = StopSwitch()
            with self._lock:
                if self.stopping.is_set():  # a signal came in just now
                    break
                self._current = switch
            try:
                code = self._run_cycle(switch)
            finally:
                with self._lock:
                    self._current = None
            self.cycles += 1
            if once:
                return code
            self._pause(started)
        return 0

    def _run_cycle(self, switch: StopSwitch) -> int:
        try:
            return self._cycle(switch)
        except RunAborted as stop:
            if self.stopping.is_set():
                log.info("cycle stopped: %s", stop.reason)
            else:
                log.error("cycle aborted: %s", stop.reason)
            return stop.exit_code

    def _pause(self, started: float) -> None:
        due = started + self.every + random.uniform(0, self.jitter * self.every)
        wait = due - self._clock()
        if wait <= 0:
            log.warning(
                "cycle took %.1fs, longer than the interval of %.1fs: next cycle now",
                self._clock() - started,
                self.every,
            )
            return
        log.info("next cycle in %.1fs", wait)
        self.stopping.wait(wait)
