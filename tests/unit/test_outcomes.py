"""The one outcome policy: each failure maps to one outcome, status and exit code."""

from __future__ import annotations

import pytest

from invoicesync.errors import (
    AuthError,
    BadDocumentError,
    BugError,
    ConfigError,
    MailQuarantined,
    NetworkError,
    QuotaError,
    RunAborted,
    WorkerCrashed,
    WorkerMemoryError,
    WorkerTimeout,
)
from invoicesync.pipeline.outcomes import Outcome, Stage, as_error, decide, exit_code
from invoicesync.resilience.breaker import CircuitOpenError
from invoicesync.resilience.processes import RemoteBug
from invoicesync.store.schema import Status


@pytest.mark.parametrize(
    ("exc", "stage", "outcome", "status", "unfinished"),
    [
        (CircuitOpenError("open"), Stage.EXTRACT, Outcome.LEAVE_UNTRIED, Status.PENDING, False),
        (WorkerTimeout("t"), Stage.EXTRACT, Outcome.RETRY_LATER, Status.FAILED_TRANSIENT, True),
        (WorkerCrashed("c"), Stage.INGEST, Outcome.RETRY_LATER, Status.FAILED_TRANSIENT, True),
        (NetworkError("n"), Stage.INGEST, Outcome.RETRY_LATER, Status.FAILED_TRANSIENT, False),
        (WorkerMemoryError("m"), Stage.EXTRACT, Outcome.FAIL_ITEM, Status.FAILED_FATAL, False),
        (BadDocumentError("b"), Stage.EXTRACT, Outcome.FAIL_ITEM, Status.FAILED_FATAL, False),
        (MailQuarantined("q"), Stage.INGEST, Outcome.FAIL_ITEM, Status.FAILED_FATAL, False),
        (AuthError("key"), Stage.EXTRACT, Outcome.STOP_ENDPOINT, Status.PENDING, False),
        (AuthError("pw"), Stage.INGEST, Outcome.STOP_ACCOUNT, Status.FAILED_FATAL, False),
        (QuotaError("q"), Stage.POST_ACTION, Outcome.STOP_ACCOUNT, Status.FAILED_FATAL, False),
        (KeyError("x"), Stage.EXTRACT, Outcome.BUG, Status.FAILED_FATAL, False),
        (RemoteBug("KeyError", "x", "tb"), Stage.EXTRACT, Outcome.BUG, Status.FAILED_FATAL, False),
        (BugError("b"), Stage.INGEST, Outcome.BUG, Status.FAILED_FATAL, False),
        (OSError(5, "EIO"), Stage.INGEST, Outcome.RETRY_LATER, Status.FAILED_TRANSIENT, False),
    ],
)
def test_each_failure_has_one_outcome(
    exc: Exception, stage: Stage, outcome: Outcome, status: str, unfinished: bool
) -> None:
    decision = decide(exc, stage)
    assert (decision.outcome, decision.status, decision.unfinished) == (outcome, status, unfinished)


def test_a_bug_becomes_an_error_of_the_tree_with_its_type() -> None:
    error = as_error(KeyError("ı"), Stage.EXTRACT)
    assert isinstance(error, BugError) and error.kind == "bug" and "KeyError" in str(error)
    assert decide(error, Stage.EXTRACT).kind == "bug"


def test_a_stop_is_never_an_items_failure() -> None:
    with pytest.raises(TypeError):
        decide(RunAborted("stop"), Stage.INGEST)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ConfigError("c"), 2),
        (AuthError("a"), 3),
        (NetworkError("n"), 1),
        (RunAborted("r", exit_code=143), 143),
    ],
)
def test_exit_codes(exc: BaseException, code: int) -> None:
    assert exit_code(exc) == code
