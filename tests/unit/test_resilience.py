"""Retry policies, deadlines, circuit breakers and the watchdog, with instant waits."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from invoicesync.config import BreakerSettings, RetrySettings
from invoicesync.errors import (
    AuthError,
    NetworkError,
    RateLimitedError,
    RunAborted,
    ServerError,
)
from invoicesync.resilience.breaker import (
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
)
from invoicesync.resilience.retry import RetryPolicy
from invoicesync.resilience.timeouts import Deadline
from invoicesync.resilience.watchdog import StopSwitch, Watchdog

INSTANT = RetrySettings(attempts=3, time_scale=0)


class Flaky:
    """Fails with the given errors in turn, then returns "done"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_transient_errors_are_retried_until_success() -> None:
    """Two transient failures then success: three calls, the result returned."""
    flaky = Flaky(NetworkError("reset"), ServerError("503"))
    assert RetryPolicy(INSTANT, stage="t").call(flaky) == "done"
    assert flaky.calls == 3


def test_attempts_are_bounded_and_the_last_error_raised() -> None:
    """After `attempts` transient failures the last error propagates unchanged."""
    flaky = Flaky(NetworkError("1"), NetworkError("2"), NetworkError("3"), NetworkError("4"))
    with pytest.raises(NetworkError, match="3"):
        RetryPolicy(INSTANT, stage="t").call(flaky)
    assert flaky.calls == 3


def test_fatal_errors_are_never_retried() -> None:
    """A fatal error (bad credentials) is raised after one call."""
    flaky = Flaky(AuthError("bad password"))
    with pytest.raises(AuthError):
        RetryPolicy(INSTANT, stage="t").call(flaky)
    assert flaky.calls == 1


def test_retry_after_is_honoured_and_clamped(caplog: pytest.LogCaptureFixture) -> None:
    """The computed wait equals Retry-After, clamped to retry_after_max; one log line per retry."""
    settings = RetrySettings(attempts=3, time_scale=0, retry_after_max=60)
    flaky = Flaky(RateLimitedError("429", retry_after=7), RateLimitedError("429", retry_after=600))
    with caplog.at_level(logging.WARNING, logger="invoicesync.resilience.retry"):
        assert RetryPolicy(settings, stage="openai").call(flaky) == "done"
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "stage=openai attempt=1/3 error=rate_limited:429 next_in=7.0s",
        "stage=openai attempt=2/3 error=rate_limited:429 next_in=60.0s",
    ]


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    """Waits double per attempt, stay within the jitter, and never exceed backoff_max."""
    policy = RetryPolicy(RetrySettings(backoff_initial=1, backoff_max=5, jitter=0.5), stage="t")
    for attempt, base in [(1, 1), (2, 2), (3, 4)]:
        delay = policy.delay(attempt, NetworkError("x"))
        assert base <= delay <= base + 0.5
    assert policy.delay(10, NetworkError("x")) == 5


def test_deadline_cuts_a_retry_loop_short() -> None:
    """When the next wait would outlive the deadline, retrying stops at once."""
    settings = RetrySettings(attempts=10, time_scale=0)
    flaky = Flaky(*[RateLimitedError("429", retry_after=30) for _ in range(10)])
    with pytest.raises(RateLimitedError):
        RetryPolicy(settings, stage="t").call(flaky, deadline=Deadline(5))
    assert flaky.calls == 1


def test_deadline_nesting_and_operation_timeouts() -> None:
    """A child deadline never outlives its parent; an operation gets min(own, left)."""
    clock = FakeClock()
    run = Deadline(600, clock=clock)
    account = run.child(180)
    assert account.timeout(30) == 30
    clock.now += 170
    assert account.timeout(30) == pytest.approx(10)
    assert run.child(1000).remaining() == pytest.approx(430)
    clock.now += 20
    assert account.expired and not run.expired
    assert Deadline.never().timeout(None) == float("inf")


def test_breaker_opens_half_opens_and_closes() -> None:
    """3 transient failures open it; after the cool-down one trial passes; success closes it."""
    clock = FakeClock()
    breaker = CircuitBreaker(
        "imap.example", BreakerSettings(threshold=3, cooldown=300), clock=clock
    )
    for _ in range(3):
        with pytest.raises(NetworkError):
            breaker.call(Flaky(NetworkError("down")))
    assert breaker.state is BreakerState.OPEN
    never_called = Flaky()
    with pytest.raises(CircuitOpenError):
        breaker.call(never_called)
    assert never_called.calls == 0
    clock.now += 300
    assert breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(NetworkError):  # the trial fails: open again for a full cool-down
        breaker.call(Flaky(NetworkError("still down")))
    assert breaker.state is BreakerState.OPEN
    clock.now += 300
    assert breaker.call(Flaky()) == "done"
    assert breaker.state is BreakerState.CLOSED


def test_breaker_ignores_fatal_errors_and_resets_on_success() -> None:
    """Fatal errors say nothing about the endpoint; a success resets the failure count."""
    breaker = CircuitBreaker("h", BreakerSettings(threshold=2, cooldown=300), clock=FakeClock())
    for error in (AuthError("x"), AuthError("y"), NetworkError("z")):
        with pytest.raises(type(error)):
            breaker.call(Flaky(error))
    breaker.call(Flaky())
    with pytest.raises(NetworkError):
        breaker.call(Flaky(NetworkError("z")))
    assert breaker.state is BreakerState.CLOSED


def test_watchdog_trips_closes_connections_then_exits() -> None:
    """At the timeout the switch trips and closers run; after the grace the process exits 4."""
    switch = StopSwitch()
    closed = threading.Event()
    switch.register(closed.set)
    exited: list[int] = []
    recorded = threading.Event()
    watchdog = Watchdog(
        switch, timeout=0.05, grace=0.05, on_abort=recorded.set, exit=exited.append
    ).start()
    deadline = time.monotonic() + 5
    while not exited and time.monotonic() < deadline:
        time.sleep(0.01)
    assert exited == [4]
    assert closed.is_set() and recorded.is_set()
    assert switch.tripped is not None and switch.tripped.status == "aborted"
    with pytest.raises(RunAborted) as caught:
        switch.raise_if_tripped()
    assert caught.value.exit_code == 4
    watchdog.finish()


def test_watchdog_names_the_items_in_flight_when_it_fires(
    caplog: pytest.LogCaptureFixture,
) -> None:
    switch = StopSwitch()
    exited: list[int] = []
    with switch.working("document:7 (hangs.pdf)"), caplog.at_level(logging.ERROR):
        with switch.working("mail INBOX:abc"):
            pass  # finished: no longer in flight
        watchdog = Watchdog(switch, timeout=0.05, grace=0.05, exit=exited.append).start()
        deadline = time.monotonic() + 5
        while not exited and time.monotonic() < deadline:
            time.sleep(0.01)
    assert "in flight: document:7 (hangs.pdf) for 0s" in caplog.text
    assert "INBOX:abc" not in caplog.text
    assert switch.in_flight() == []
    watchdog.finish()


def test_watchdog_stands_down_when_the_run_finishes() -> None:
    """A run that ends in time is never tripped nor exited."""
    switch = StopSwitch()
    exited: list[int] = []
    watchdog = Watchdog(switch, timeout=0.2, grace=0.01, exit=exited.append).start()
    watchdog.finish()
    time.sleep(0.3)
    assert switch.tripped is None and exited == []
