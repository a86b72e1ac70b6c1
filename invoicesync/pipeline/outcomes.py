"""Every failure's outcome, decided in one place.

An exception met while working an item (a mail, a document, a post-action), or the
death of the worker that parsed it, maps to exactly one ``Outcome``; ingestion,
extraction, post-actions and the CLI's exit code all ask ``decide`` instead of
keeping their own except ladders. The rules, in order:

- a circuit breaker open: ``LEAVE_UNTRIED`` (pending, no attempt counted);
- a worker cut off (timeout, a dead worker) or a transient error: ``RETRY_LATER``
  (``failed_transient``, tried again by later runs, quarantined after
  ``retries.item_attempts``; ``unfinished`` marks the cut-off ones);
- bad input (a broken PDF, malformed MIME, hostile XML, a memory limit hit):
  ``FAIL_ITEM`` (``failed_fatal`` with the reason);
- any other fatal error: ``STOP_ENDPOINT`` while extracting (the model endpoint
  refused us: its documents stay pending, untried) and ``STOP_ACCOUNT`` elsewhere
  (bad credentials, exhausted quota, a missing mailbox);
- anything outside the error tree: ``BUG`` (logged once with its traceback, counted,
  ``failed_fatal`` with kind ``bug``: fixed, never retried for ever).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from invoicesync.errors import (
    BadInputError,
    BugError,
    ConfigError,
    ExitCode,
    FatalError,
    InvoiceSyncError,
    RunAborted,
    TransientError,
    WorkerCrashed,
    WorkerTimeout,
)
from invoicesync.resilience.breaker import CircuitOpenError
from invoicesync.resilience.processes import RemoteBug
from invoicesync.store.schema import Status

__all__ = ["Decision", "ExitCode", "Outcome", "Stage", "decide", "exit_code"]


class Stage(StrEnum):
    INGEST = "ingest"
    EXTRACT = "extract"
    POST_ACTION = "post_action"


class Outcome(StrEnum):
    RETRY_LATER = "retry_later"
    FAIL_ITEM = "fail_item"
    STOP_ACCOUNT = "stop_account"
    STOP_ENDPOINT = "stop_endpoint"
    LEAVE_UNTRIED = "leave_untried"
    BUG = "bug"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    kind: str
    #: The attempt was cut off (a timeout, a dead worker): once the attempts are
    #: used up, the item is quarantined rather than given up on.
    unfinished: bool = False

    @property
    def status(self) -> str:
        """The item's status for the outcomes that record one."""
        if self.outcome is Outcome.RETRY_LATER:
            return Status.FAILED_TRANSIENT
        if self.outcome in (Outcome.LEAVE_UNTRIED, Outcome.STOP_ENDPOINT):
            return Status.PENDING
        return Status.FAILED_FATAL


def decide(exc: BaseException, stage: Stage) -> Decision:
    """The one outcome of ``exc`` met while working an item of ``stage``."""
    if isinstance(exc, RunAborted):
        raise TypeError("a stop is not an item's failure")  # callers re-raise it first
    if isinstance(exc, CircuitOpenError):
        return Decision(Outcome.LEAVE_UNTRIED, exc.kind)
    if isinstance(exc, WorkerTimeout | WorkerCrashed):
        return Decision(Outcome.RETRY_LATER, exc.kind, unfinished=True)
    if isinstance(exc, TransientError):
        return Decision(Outcome.RETRY_LATER, exc.kind)
    if isinstance(exc, BugError | RemoteBug):
        return Decision(Outcome.BUG, BugError.kind)
    if isinstance(exc, BadInputError):
        return Decision(Outcome.FAIL_ITEM, exc.kind)
    if isinstance(exc, FatalError):
        stop = Outcome.STOP_ENDPOINT if stage is Stage.EXTRACT else Outcome.STOP_ACCOUNT
        return Decision(stop, exc.kind)
    if isinstance(exc, OSError):  # the disk or a socket outside the adapters: may pass
        return Decision(Outcome.RETRY_LATER, "io")
    return Decision(Outcome.BUG, BugError.kind)


def as_error(exc: BaseException, stage: Stage) -> InvoiceSyncError:
    """``exc`` as an error of the tree, for the item's reason (a bug keeps its type)."""
    if isinstance(exc, InvoiceSyncError):
        return exc
    if isinstance(exc, RemoteBug):
        return BugError(str(exc), stage=stage.value)
    return BugError(f"{type(exc).__name__}: {exc}", stage=stage.value)


def exit_code(exc: BaseException) -> int:
    """The process's exit code for an error that ended a command."""
    if isinstance(exc, RunAborted):
        return exc.exit_code
    if isinstance(exc, ConfigError):
        return ExitCode.USAGE
    if isinstance(exc, FatalError):
        return ExitCode.FATAL
    return ExitCode.PENDING
