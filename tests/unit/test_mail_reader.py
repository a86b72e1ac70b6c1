"""Mails walked in worker batches: a batch cut off is walked again one by one."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from invoicesync.errors import MalformedMailError, WorkerCrashed, WorkerTimeout
from invoicesync.models import ParsedMail
from invoicesync.pipeline.mail_reader import MailReader, parse_mails
from invoicesync.resilience.processes import WorkerPool
from tests import workers


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    pool = WorkerPool(processes=1, memory_mb=300)
    yield pool
    pool.close()


def _subjects(results: list[object]) -> list[object]:
    return [r.subject if isinstance(r, ParsedMail) else type(r) for r in results]


def test_a_batch_is_one_call_and_an_error_fails_only_its_mail(pool: WorkerPool) -> None:
    reader = MailReader(pool, timeout=10, walk=workers.walk_mails)
    results = reader.parse([b"a", b"bad", b"c"])
    assert _subjects(results) == ["a", MalformedMailError, "c"]
    assert pool.started == 1 and pool.replaced == 0


def test_a_hanging_mail_costs_its_limit_and_fails_alone(pool: WorkerPool) -> None:
    reader = MailReader(pool, timeout=0.5, walk=workers.walk_mails)
    started = time.monotonic()
    results = reader.parse([b"a", b"hang", b"c"])
    assert time.monotonic() - started < 5  # the batch's limit, then the hanging one's alone
    assert _subjects(results) == ["a", WorkerTimeout, "c"]


def test_a_mail_that_kills_its_worker_fails_alone_as_crashed(pool: WorkerPool) -> None:
    reader = MailReader(pool, timeout=10, walk=workers.walk_mails)
    results = reader.parse([b"a", b"boom", b"c"])
    assert _subjects(results) == ["a", WorkerCrashed, "c"]
    assert "SIGKILL" in str(results[1])


def test_the_real_walk_returns_errors_of_the_tree_per_mail() -> None:
    good = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
    results = parse_mails([good, b"\x8b\x00 not a mail"])
    assert isinstance(results[0], ParsedMail) and results[0].subject == "hi"
    assert isinstance(results[1], MalformedMailError)
