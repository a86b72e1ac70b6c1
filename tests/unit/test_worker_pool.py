"""The supervised worker pool: real worker processes, one failure per task."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from invoicesync.errors import (
    BadDocumentError,
    WorkerCrashed,
    WorkerMemoryError,
    WorkerTimeout,
)
from invoicesync.resilience.processes import RemoteBug, WorkerPool
from tests import workers


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    pool = WorkerPool(processes=2, memory_mb=300)
    yield pool
    pool.close()


def _gone(pid: int, within: float = 5.0) -> bool:
    limit = time.monotonic() + within
    while time.monotonic() < limit:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A killed child of the fork server may linger as a zombie until reaped.
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                if stat.read().split(") ", 1)[1].startswith("Z"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_results_and_errors_of_the_tree_come_back_as_they_are(pool: WorkerPool) -> None:
    assert pool.call(workers.echo, {"a": [1, 2]}, timeout=10) == {"a": [1, 2]}
    with pytest.raises(BadDocumentError, match="not a PDF"):
        pool.call(workers.bad_document, timeout=10)
    assert pool.replaced == 0  # an error of the tree leaves the worker in service


def test_an_exception_outside_the_tree_is_a_remote_bug_with_its_traceback(
    pool: WorkerPool,
) -> None:
    with pytest.raises(RemoteBug) as caught:
        pool.call(workers.bug, timeout=10)
    assert caught.value.type_name == "KeyError"
    assert "workers.py" in caught.value.remote_traceback


def test_workers_start_lazily_and_run_side_by_side(pool: WorkerPool) -> None:
    assert pool.pids() == [] and pool.started == 0
    results: list[str] = []
    started = time.monotonic()
    threads = [
        threading.Thread(target=lambda: results.append(pool.call(workers.sleep, 1.0, timeout=10)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["woke", "woke"]
    assert time.monotonic() - started < 1.9  # two at once, not one after the other
    assert pool.started == 2


def test_a_task_past_its_limit_is_killed_and_the_worker_replaced(pool: WorkerPool) -> None:
    victim = pool.call(workers.pid, timeout=10)
    started = time.monotonic()
    with pytest.raises(WorkerTimeout, match=r"timeout after 0\.5 s"):
        pool.call(workers.spin, timeout=0.5)
    assert time.monotonic() - started < 3
    assert _gone(victim)
    assert pool.call(workers.echo, "next", timeout=10) == "next"
    assert pool.replaced == 1


def test_a_worker_that_ignores_sigterm_is_killed_anyway(pool: WorkerPool) -> None:
    started = time.monotonic()
    with pytest.raises(WorkerTimeout):
        pool.call(workers.ignore_term_and_sleep, 30, timeout=0.5)
    assert time.monotonic() - started < 3


def test_memory_past_the_limit_fails_the_task_with_kind_memory(pool: WorkerPool) -> None:
    with pytest.raises(WorkerMemoryError) as caught:
        pool.call(workers.allocate, 1000, timeout=10)
    assert caught.value.kind == "memory" and "300 MiB" in str(caught.value)
    assert pool.call(workers.allocate, 20, timeout=10) == 20 * 1024 * 1024


def test_a_native_abort_under_a_memory_limit_counts_as_memory(pool: WorkerPool) -> None:
    with pytest.raises(WorkerMemoryError, match="SIGABRT"):
        pool.call(workers.abort, timeout=10)


def test_a_worker_killed_from_outside_fails_its_task_as_crashed_with_the_signal(
    pool: WorkerPool,
) -> None:
    with pytest.raises(WorkerCrashed, match="killed by SIGSEGV") as caught:
        pool.call(workers.die, int(signal.SIGSEGV), timeout=10)
    assert caught.value.kind == "crashed"
    victim: list[int] = []

    def kill_it() -> None:
        while not pool.pids():
            time.sleep(0.01)
        victim.append(pool.pids()[0])
        os.kill(victim[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_it)
    killer.start()
    with pytest.raises(WorkerCrashed, match="killed by SIGKILL"):
        pool.call(workers.sleep, 10, timeout=20)
    killer.join()
    assert pool.call(workers.echo, 1, timeout=10) == 1


def test_a_stop_check_kills_the_busy_worker_and_propagates(pool: WorkerPool) -> None:
    class Stop(Exception):
        pass

    limit = time.monotonic() + 0.3

    def check() -> None:
        if time.monotonic() > limit:
            raise Stop

    victim = pool.call(workers.pid, timeout=10)
    with pytest.raises(Stop):
        pool.call(workers.spin, timeout=30, check=check)
    assert _gone(victim)


def test_kill_ends_every_worker_and_the_waiting_callers(pool: WorkerPool) -> None:
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            pool.call(workers.sleep, 30, timeout=60)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wait) for _ in range(3)]  # one more than workers
    for thread in threads:
        thread.start()
    while len(pool.pids()) < 2:
        time.sleep(0.01)
    pids = pool.pids()
    started = time.monotonic()
    pool.kill()
    for thread in threads:
        thread.join(10)
    assert time.monotonic() - started < 5
    assert len(errors) == 3 and all(isinstance(e, WorkerCrashed) for e in errors)
    assert all(_gone(pid) for pid in pids)


def test_close_lets_idle_workers_exit(pool: WorkerPool) -> None:
    pid = pool.call(workers.pid, timeout=10)
    pool.close()
    assert _gone(pid)
    with pytest.raises(WorkerCrashed):
        pool.call(workers.echo, 1, timeout=10)
