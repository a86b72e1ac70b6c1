"""One scheduled cycle in a process of its own, as cron would run it.

A run's watchdog ends a run that overstays with a hard exit (``os._exit(4)``):
in the scheduler's own process that would end the scheduler, and a restart
policy would turn it into a crash loop. So each cycle runs in a child process
(``spawn``: the scheduler's threads and sockets are not copied); the scheduler
waits for it, forwards a stop to it as SIGTERM, and goes on with the next cycle
whatever became of this one. The child reports its result back through a pipe
for the scheduler's metrics; a child that dies first reports nothing, and the
scheduler records the cycle from its exit code alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from invoicesync.resilience.watchdog import StopSwitch

__all__ = ["run_in_child"]

log = logging.getLogger(__name__)

_POLL = 0.2
_PR_SET_PDEATHSIG = 1


def run_in_child(
    target: Callable[..., int], args: tuple[Any, ...], *, switch: StopSwitch
) -> tuple[int, Any]:
    """``target(report, *args)`` in a child process: its exit code and its last report.

    ``report`` is a callable the child uses to send one picklable value back (None
    when it died before). A trip of ``switch`` is forwarded to the child as SIGTERM.
    """
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe(duplex=False)
    process = context.Process(
        target=_child_main, args=(target, theirs, args), name="invoicesync-cycle"
    )
    process.start()
    theirs.close()
    report: Any = None
    forwarded = False
    try:
        while True:
            if switch.tripped is not None and not forwarded and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
                forwarded = True
            try:
                if ours.poll(_POLL):
                    report = ours.recv()
                    continue
            except (EOFError, OSError):
                break  # the child is gone (or closed its end): wait for its exit code
            if not process.is_alive():
                break
        process.join()
    finally:
        ours.close()
        if process.is_alive():  # the scheduler itself is going down: so does the cycle
            process.terminate()
            process.join(5)
    code = process.exitcode
    if code is None or code < 0:
        name = signal.Signals(-code).name if code is not None and code < 0 else "?"
        log.error("cycle process killed by %s", name)
        return 128 + (-code if code is not None else 9), report
    return code, report


def _child_main(target: Callable[..., int], conn: Connection, args: tuple[Any, ...]) -> None:
    _die_with_parent()

    def report(value: Any) -> None:
        with contextlib.suppress(OSError):
            conn.send(value)

    try:
        code = target(report, *args)
    finally:
        conn.close()
    sys.exit(code)


def _die_with_parent() -> None:
    """SIGTERM (a graceful stop) when the scheduler dies without stopping us."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
