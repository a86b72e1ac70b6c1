"""The scheduler loop: cycles, pauses with jitter, no overlap, stopping between or within."""

from __future__ import annotations

import threading
import time

import pytest

from invoicesync.config import parse_interval
from invoicesync.resilience.watchdog import StopSwitch
from invoicesync.schedule import Scheduler


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("text", "seconds"), [("2s", 2), ("90", 90), ("30m", 1800), ("1h30m", 5400), ("0.5s", 0.5)]
)
def test_intervals(text: str, seconds: float) -> None:
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "0s", "5d", "-1m"])
def test_bad_intervals(text: str) -> None:
    with pytest.raises(ValueError):
        parse_interval(text)


def test_once_runs_one_cycle_and_returns_its_code() -> None:
    scheduler = Scheduler(lambda switch: 3, every=60)
    assert scheduler.loop(once=True) == 3 and scheduler.cycles == 1


def test_cycles_repeat_until_stopped_between_cycles() -> None:
    codes: list[int] = []

    def cycle(switch: StopSwitch) -> int:
        codes.append(len(codes))
        if len(codes) == 3:
            threading.Timer(0.05, scheduler.stop, args=("test",)).start()
        return 0

    scheduler = Scheduler(cycle, every=0.02)
    started = time.monotonic()
    assert scheduler.loop() == 0
    assert len(codes) in {3, 4, 5} and time.monotonic() - started < 2


def test_a_stop_while_idle_ends_the_pause_at_once() -> None:
    scheduler = Scheduler(lambda switch: 0, every=3600)
    threading.Timer(0.2, scheduler.stop, args=("test",)).start()
    started = time.monotonic()
    assert scheduler.loop() == 0
    assert scheduler.cycles == 1 and time.monotonic() - started < 2


def test_a_stop_during_a_cycle_trips_its_switch_and_ends_the_loop() -> None:
    seen: list[bool] = []

    def cycle(switch: StopSwitch) -> int:
        threading.Timer(0.05, scheduler.stop, args=("by test",)).start()
        seen.append(switch.event.wait(2))  # the cycle's own graceful stop
        assert switch.tripped is not None and switch.tripped.status == "interrupted"
        return 143

    scheduler = Scheduler(cycle, every=0.01)
    assert scheduler.loop() == 0
    assert seen == [True] and scheduler.cycles == 1


def test_an_overrunning_cycle_is_followed_at_once_never_overlapped() -> None:
    clock = _Clock()
    running = threading.Lock()
    starts: list[float] = []

    def cycle(switch: StopSwitch) -> int:
        assert running.acquire(blocking=False), "two cycles at once"
        starts.append(clock.now)
        clock.now += 90  # longer than the 60 s interval
        running.release()
        if len(starts) == 3:
            scheduler.stopping.set()
        return 0

    scheduler = Scheduler(cycle, every=60, clock=clock)
    scheduler.loop()
    assert starts == [0, 90, 180]


def test_pauses_are_the_interval_plus_at_most_the_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    waits: list[float] = []
    scheduler = Scheduler(lambda switch: 0, every=100, jitter=0.1, clock=clock)

    def wait(timeout: float | None = None) -> bool:
        assert timeout is not None
        waits.append(timeout)
        clock.now += timeout
        if len(waits) == 20:
            scheduler.stopping.set()
        return scheduler.stopping.is_set()

    monkeypatch.setattr(scheduler.stopping, "wait", wait)
    scheduler.loop()
    assert all(100 <= w <= 110 for w in waits) and len(set(waits)) > 1
