"""Supervised worker processes for work on untrusted bytes.

A parser fed by strangers can loop, balloon or crash, and a thread cannot be
stopped. So such work runs in worker processes, each watched by the thread that
handed it its task: past the task's wall-clock limit the worker is killed and
replaced, a worker that dies fails only its own task, and a worker that hits its
memory limit (``RLIMIT_AS``) fails its task with ``WorkerMemoryError``.

Why not a library pool: ``concurrent.futures.ProcessPoolExecutor`` cannot kill one
hung task and breaks as a whole when one worker dies; pebble can, but all its
workers share one result pipe under a lock, and a worker killed while it holds
that lock breaks the pool; billiard brings Celery's pool with it. One pipe per
worker, owned by one caller at a time, keeps every failure local to its task.

Workers are forked by multiprocessing's fork server (forking the run's own
process, which has threads and database connections, is not safe), with the
parsing modules preloaded there, so a replacement starts in milliseconds. They
start lazily, at the first task. A worker exits when the process that started
the pool is gone, even while it is stuck in C code: the kernel kills it
(``PR_SET_PDEATHSIG`` against the fork server, which exits with its parent), and
a watcher thread covers the systems without that.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar, cast

from invoicesync.errors import (
    InvoiceSyncError,
    WorkerCrashed,
    WorkerMemoryError,
    WorkerTimeout,
)

__all__ = ["RemoteBug", "WorkerPool"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# How often a waiting caller looks at its stop check.
_POLL = 0.1
# Seconds a killed worker gets between SIGTERM and SIGKILL.
_TERM_GRACE = 0.5
# A worker is replaced after this many tasks: fragmentation of its heap does not grow.
_MAX_TASKS = 500
_PR_SET_PDEATHSIG = 1


class RemoteBug(Exception):
    """An exception outside the error tree raised in a worker (a bug), with its traceback."""

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        super().__init__(type_name, message, remote_traceback)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.tasks = 0

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    def kill(self) -> None:
        """SIGTERM, then SIGKILL after a short grace; reaps the process."""
        with contextlib.suppress(Exception):
            self.process.terminate()
            self.process.join(_TERM_GRACE)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
        with contextlib.suppress(Exception):
            if not self.process.is_alive():
                self.process.close()


class WorkerPool:
    """Up to ``processes`` workers; ``call`` runs one function in one of them.

    ``call`` blocks its thread until a worker is free, then until the result, the
    ``timeout`` or a stop (``check`` raising, or ``kill`` from another thread).
    Safe to use from many threads at once; each task has a worker to itself.
    """

    def __init__(
        self,
        *,
        processes: int,
        memory_mb: int = 0,
        preload: Sequence[str] = (),
    ) -> None:
        self.processes = max(1, processes)
        self.memory_mb = memory_mb
        self._preload = list(preload)
        self._slots = threading.Semaphore(self.processes)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._closed = False
        #: Workers started, and replaced after a kill or a death (for metrics and tests).
        self.started = 0
        self.replaced = 0

    # --------------------------------------------------------------- public

    def call(
        self,
        function: Callable[..., T],
        *args: Any,
        timeout: float,
        what: str = "task",
        check: Callable[[], None] | None = None,
    ) -> T:
        """``function(*args)`` in a worker; its return value, or its exception re-raised.

        Raises ``WorkerTimeout`` after ``timeout`` seconds (the worker is killed),
        ``WorkerMemoryError`` when it ran out of memory, ``WorkerCrashed`` when it
        died, and ``RemoteBug`` for an exception outside the error tree. Whatever
        ``check`` raises (a stop, a deadline) kills the worker and propagates.
        """
        while not self._slots.acquire(timeout=_POLL):
            if check is not None:
                check()
            self._raise_if_closed()
        try:
            worker = self._checkout()
            healthy = False
            try:
                status, payload = self._run(worker, function, args, timeout, what, check)
                healthy = status != "memory"  # a worker that hit its limit has exited
            finally:
                self._checkin(worker, healthy=healthy)
        finally:
            self._slots.release()
        return cast(T, self._outcome(status, payload, what))

    def pids(self) -> list[int]:
        """The worker processes alive now."""
        with self._lock:
            return [w.pid for w in [*self._idle, *self._busy] if w.process.is_alive()]

    def kill(self) -> None:
        """Stop at once: every worker killed, busy or not; callers get ``WorkerCrashed``."""
        with self._lock:
            self._closed = True
            workers = [*self._idle, *self._busy]
            self._idle = []
        for worker in workers:
            with contextlib.suppress(Exception):
                worker.process.kill()
        for worker in workers:
            with contextlib.suppress(Exception):
                worker.process.join(5)

    def close(self) -> None:
        """End the pool: idle workers are told to exit, busy ones are killed."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = list(self._busy)
        for worker in idle:
            with contextlib.suppress(Exception):
                worker.conn.send(None)
        for worker in idle:
            worker.process.join(2)
            if worker.process.is_alive():
                worker.kill()
            worker.close()
        for worker in busy:
            with contextlib.suppress(Exception):
                worker.process.kill()

    # ------------------------------------------------------------- internal

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise WorkerCrashed("the worker pool was stopped", stage="extract")

    def _checkout(self) -> _Worker:
        with self._lock:
            self._raise_if_closed()
            while self._idle:
                worker = self._idle.pop()
                if worker.process.is_alive():
                    self._busy.add(worker)
                    return worker
                worker.close()  # died while idle (killed from outside)
        worker = self._start()
        with self._lock:
            if self._closed:
                worker.kill()
                self._raise_if_closed()
            self._busy.add(worker)
        return worker

    def _checkin(self, worker: _Worker, *, healthy: bool) -> None:
        with self._lock:
            self._busy.discard(worker)
            keep = healthy and not self._closed and worker.tasks < _MAX_TASKS
            if keep:
                self._idle.append(worker)
        if not keep:
            if healthy and worker.process.is_alive():
                with contextlib.suppress(Exception):
                    worker.conn.send(None)
                worker.process.join(1)
            worker.kill()
            if not healthy:
                self.replaced += 1

    def _start(self) -> _Worker:
        context = multiprocessing.get_context("forkserver")
        if self._preload:
            context.set_forkserver_preload(self._preload)
        ours, theirs = context.Pipe(duplex=True)
        memory = self.memory_mb * 1024 * 1024
        process = context.Process(
            target=_worker_main,
            args=(theirs, memory, os.getpid()),
            name="invoicesync-worker",
            daemon=True,
        )
        process.start()
        theirs.close()
        self.started += 1
        return _Worker(process, ours)

    def _run(
        self,
        worker: _Worker,
        function: Callable[..., T],
        args: tuple[Any, ...],
        timeout: float,
        what: str,
        check: Callable[[], None] | None,
    ) -> tuple[str, Any]:
        worker.tasks += 1
        try:
            worker.conn.send((function, args))
        except (OSError, EOFError) as exc:
            raise self._death(worker, what) from exc
        limit = time.monotonic() + timeout
        while True:
            left = limit - time.monotonic()
            if left <= 0:
                log.warning(
                    "%s: over its %gs limit in worker %d: killed", what, timeout, worker.pid
                )
                raise WorkerTimeout(
                    f"{what}: timeout after {timeout:g} s (timeouts.extract_document); "
                    "the worker was killed",
                    stage="extract",
                )
            try:
                ready = worker.conn.poll(min(_POLL, left))
            except (OSError, EOFError) as exc:
                raise self._death(worker, what) from exc
            if ready:
                try:
                    reply: tuple[str, Any] = worker.conn.recv()
                except (OSError, EOFError) as exc:
                    raise self._death(worker, what) from exc
                return reply
            if check is not None:
                check()  # a stop: the caller's finally kills the worker

    def _outcome(self, status: str, payload: Any, what: str) -> Any:
        if status == "ok":
            return payload
        if status == "memory":
            raise WorkerMemoryError(
                f"{what}: needs more than extract.memory_mb = {self.memory_mb} MiB",
                stage="extract",
            )
        raise cast(BaseException, payload)

    def _death(self, worker: _Worker, what: str) -> WorkerCrashed | WorkerMemoryError:
        worker.process.join(2)
        code = worker.process.exitcode
        if self._closed:
            how = "the run was stopped"
        elif code is not None and code < 0:
            how = f"killed by {_signal_name(-code)}"
        else:
            how = f"exited with code {code}"
        log.warning("%s: worker %d died (%s)", what, worker.pid, how)
        if code == -signal.SIGABRT and self.memory_mb and not self._closed:
            # Native parsers (PDFium) abort() when an allocation fails instead of
            # raising: under a memory limit, that is the limit.
            return WorkerMemoryError(
                f"{what}: the parser aborted (SIGABRT), at the worker's memory limit "
                f"(extract.memory_mb = {self.memory_mb} MiB)",
                stage="extract",
            )
        return WorkerCrashed(f"{what}: worker process {how}", stage="extract")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# ------------------------------------------------------------------ worker side


def _worker_main(conn: Connection, memory: int, owner: int) -> None:
    """A worker's loop: tasks in, results out, until told to stop or the owner is gone."""
    _die_with_parent(owner)
    # Ctrl-C and SIGTERM are for the run, which then ends us: SIGTERM keeps its
    # default action, which works even while a parser is stuck in C code.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if memory:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        function, args = task
        try:
            reply: tuple[str, Any] = ("ok", function(*args))
        except MemoryError:
            reply = ("memory", None)
        except InvoiceSyncError as exc:
            reply = ("error", exc)
        except Exception as exc:
            reply = (
                "error",
                RemoteBug(type(exc).__name__, str(exc)[:2000], traceback.format_exc()),
            )
        del task, function, args
        _reply(conn, reply)
        if reply[0] == "memory":
            return  # a heap that hit its limit is not trusted with the next task


def _reply(conn: Connection, reply: tuple[str, Any]) -> None:
    try:
        data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
    except MemoryError:
        data = pickle.dumps(("memory", None))
    except Exception as exc:  # an exception (or result) that does not pickle
        bug = RemoteBug(type(exc).__name__, f"unpicklable result: {exc}", traceback.format_exc())
        data = pickle.dumps(("error", bug))
    with contextlib.suppress(OSError):
        conn.send_bytes(data)


def _die_with_parent(owner: int) -> None:
    """Exit when ``owner`` (the run's process) is gone, whatever this process is doing.

    The fork server hands every worker its "alive" pipe, so it does not exit (and
    ``PR_SET_PDEATHSIG`` does not fire) while a worker lives: the watcher thread is
    what ends a worker stuck in C code after its owner was SIGKILLed. A dead owner
    not yet reaped by its own parent is a zombie, which ``kill(pid, 0)`` still finds,
    so the watcher reads the process's state and start time instead.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = os.getppid()
    identity = _identity(owner)

    def watch() -> None:
        while True:
            time.sleep(0.25)
            if os.getppid() != parent or not _alive(owner, identity):
                os._exit(70)

    if not _alive(owner, identity):
        os._exit(70)
    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


def _identity(pid: int) -> str | None:
    """The process's start time (Linux), which a reused pid does not share."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, identity: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if identity is None:
        return True  # no /proc: kill(0) is all there is
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X") and fields[19] == identity
