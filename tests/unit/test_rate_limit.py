"""RateLimiter: per-minute request and token budgets, paced on a fake clock.

``FakeCancel.wait`` advances the fake clock instead of sleeping and records each
sleep, so the waits are exact and the tests instant; one test uses real threads.
"""

from __future__ import annotations

import threading
import time

import pytest

from invoicesync.errors import OperationTimeout, RunAborted
from invoicesync.resilience.rate_limit import RateLimiter
from invoicesync.resilience.timeouts import Deadline


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeCancel(threading.Event):
    """A cancel event whose ``wait`` moves the fake clock on instead of sleeping."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.sleeps: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        if self.is_set():
            return True
        assert timeout is not None and timeout > 0, "must never wait forever or busy-loop"
        self.sleeps.append(timeout)
        self.clock.now += timeout
        return False


def make(rpm: int = 0, tpm: int = 0) -> tuple[RateLimiter, FakeClock, FakeCancel]:
    clock = FakeClock()
    cancel = FakeCancel(clock)
    limiter = RateLimiter(
        requests_per_minute=rpm, tokens_per_minute=tpm, clock=clock, cancel=cancel
    )
    return limiter, clock, cancel


def test_unlimited_never_waits() -> None:
    limiter, _, cancel = make()
    assert limiter.unlimited
    assert all(limiter.acquire(10**9) == 0.0 for _ in range(1000))
    limiter.settle(0, 10**9)
    assert limiter.acquire(10**9) == 0.0
    assert cancel.sleeps == []


def test_one_unlimited_budget_is_ignored() -> None:
    limiter, _, cancel = make(rpm=60)
    assert not limiter.unlimited
    assert limiter.acquire(10**9) == 0.0  # no token budget: any size goes
    assert cancel.sleeps == []


def test_requests_budget_lets_a_minute_go_then_paces() -> None:
    limiter, _, cancel = make(rpm=60)
    assert all(limiter.acquire(0) == 0.0 for _ in range(60))
    assert cancel.sleeps == []
    assert limiter.acquire(0) == pytest.approx(1.0)
    assert limiter.acquire(0) == pytest.approx(1.0)
    assert cancel.sleeps == pytest.approx([1.0, 1.0])


def test_token_wait_is_proportional_to_the_deficit() -> None:
    limiter, _, cancel = make(tpm=6000)  # 100 tokens/s
    assert limiter.acquire(6000) == 0.0
    assert limiter.acquire(250) == pytest.approx(2.5)
    assert limiter.acquire(100) == pytest.approx(1.0)
    assert sum(cancel.sleeps) == pytest.approx(3.5)


def test_both_budgets_bind_whichever_is_tighter() -> None:
    limiter, _, _ = make(rpm=60, tpm=6000)  # 1 request/s, 100 tokens/s
    limiter.acquire(6000)
    assert limiter.acquire(500) == pytest.approx(5.0)  # tokens bind
    for _ in range(59):
        assert limiter.acquire(0) == 0.0  # the rest of the request bucket (refill was capped)
    assert limiter.acquire(0) == pytest.approx(1.0)  # requests bind


def test_oversized_request_goes_when_full_then_others_wait() -> None:
    limiter, _, cancel = make(tpm=1000)
    assert limiter.acquire(5000) == 0.0  # bigger than the whole minute, bucket full: goes
    # It drove the bucket to -4000: the next 10 tokens wait for 4010 tokens at 1000/60 per s.
    assert limiter.acquire(10) == pytest.approx(4010 * 60 / 1000)
    assert len(cancel.sleeps) == 1


def test_oversized_request_waits_for_a_full_bucket() -> None:
    limiter, _, _ = make(tpm=1000)
    limiter.acquire(1)
    assert limiter.acquire(5000) == pytest.approx(60 / 1000)  # refill the one token only


def test_settle_refund_shortens_the_next_wait() -> None:
    limiter, _, cancel = make(tpm=6000)
    limiter.acquire(6000)
    limiter.settle(estimated=6000, actual=3000)
    assert limiter.acquire(3000) == 0.0
    assert limiter.acquire(100) == pytest.approx(1.0)
    assert cancel.sleeps == pytest.approx([1.0])


def test_settle_charge_lengthens_the_next_wait() -> None:
    limiter, _, _ = make(tpm=6000)
    limiter.acquire(3000)
    assert limiter.acquire(0) == 0.0
    limiter.settle(estimated=3000, actual=6000)
    assert limiter.acquire(100) == pytest.approx(1.0)


def test_settle_never_fills_above_capacity() -> None:
    limiter, _, _ = make(tpm=6000)
    limiter.settle(estimated=6000, actual=0)
    limiter.acquire(6000)
    assert limiter.acquire(100) == pytest.approx(1.0)


def test_wait_beyond_deadline_raises_at_once_and_takes_nothing() -> None:
    limiter, clock, cancel = make(rpm=2, tpm=6000)
    limiter.acquire(6000)
    deadline = Deadline(10, clock=clock)
    with pytest.raises(OperationTimeout) as caught:
        limiter.acquire(4200, deadline=deadline)
    assert str(caught.value) == "tokens_per_minute budget: would wait 42.0s, 10.0s left"
    assert cancel.sleeps == []
    assert clock.now == 1000.0
    # Neither budget was charged: the second request and 900 tokens fit after 9 s.
    assert limiter.acquire(900, deadline=deadline) == pytest.approx(9.0)


def test_deadline_error_names_the_requests_budget() -> None:
    limiter, clock, _ = make(rpm=1)
    limiter.acquire(0)
    with pytest.raises(OperationTimeout, match=r"^requests_per_minute budget: would wait 60\.0s"):
        limiter.acquire(0, deadline=Deadline(5, clock=clock))


def test_wait_within_deadline_succeeds() -> None:
    limiter, clock, _ = make(tpm=6000)
    limiter.acquire(6000)
    assert limiter.acquire(500, deadline=Deadline(10, clock=clock)) == pytest.approx(5.0)


def test_cancel_stops_the_wait() -> None:
    limiter, _, cancel = make(rpm=1)
    limiter.acquire(0)
    cancel.set()
    with pytest.raises(RunAborted, match="requests_per_minute"):
        limiter.acquire(0)
    assert cancel.sleeps == []


def test_cancel_wakes_a_real_sleep() -> None:
    cancel = threading.Event()
    limiter = RateLimiter(requests_per_minute=1, tokens_per_minute=0, cancel=cancel)
    limiter.acquire(0)  # the next one would wait 60 s
    timer = threading.Timer(0.05, cancel.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(RunAborted):
        limiter.acquire(0)
    assert time.monotonic() - started < 0.5
    timer.join()


def test_negative_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="tokens_per_minute"):
        RateLimiter(requests_per_minute=1, tokens_per_minute=-1)
    with pytest.raises(ValueError, match="tokens"):
        make(tpm=10)[0].acquire(-1)


def test_real_threads_never_exceed_the_budget() -> None:
    rate = 200.0  # tokens/s
    limiter = RateLimiter(requests_per_minute=0, tokens_per_minute=int(rate * 60))
    start = time.monotonic()
    limiter.acquire(int(rate * 60))  # drain the full bucket: from here on, 200 tokens/s
    size, per_thread, threads = 5, 5, 4
    granted: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(per_thread):
            limiter.acquire(size)
            with lock:
                granted.append(time.monotonic())

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=2)
    assert not any(worker.is_alive() for worker in workers)
    granted.sort()
    assert len(granted) == threads * per_thread
    # By any moment t, at most rate * (t - start) tokens can have been granted.
    for count, moment in enumerate(granted, start=1):
        assert count * size <= rate * (moment - start) + 1e-3
    minimum = threads * per_thread * size / rate  # 0.5 s
    assert granted[-1] - start >= minimum
