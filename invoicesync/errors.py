"""The single exception tree of invoicesync.

Errors are classified by *what to do about them*, not by where they come from::

    InvoiceSyncError
    ├── FatalError                 stop, say so clearly, never retry
    │   ├── ConfigError            bad or missing configuration, unreadable secret
    │   ├── AuthError              bad credentials, revoked OAuth grant
    │   ├── QuotaError             exhausted quota or billing limit
    │   ├── ProtocolError          the peer speaks something we do not understand
    │   └── BadInputError          this item can never succeed (bad MIME, broken PDF, hostile XML)
    │       ├── MalformedMailError
    │       ├── BadDocumentError
    │       ├── UnsafeXmlError
    │       ├── SchemaMismatch     the model's answer is not a valid invoice (asked again once)
    │       ├── WorkerMemoryError  the document needed more than a worker may use
    │       └── MailQuarantined    a mail that used up its attempts without finishing
    ├── TransientError             may succeed later: retry with backoff, else leave pending
    │   ├── NetworkError           connection refused or reset, DNS, TLS handshake
    │   ├── OperationTimeout       a single operation exceeded its own timeout
    │   │   └── WorkerTimeout      a document or mail outlived its limit in a worker
    │   ├── RateLimitedError       429 and friends; carries ``retry_after`` seconds
    │   ├── ServerError            5xx and other "try again" answers
    │   ├── StoreBusyError         database locked or serialisation failure
    │   └── WorkerCrashed          the worker process died (a signal, the OOM killer)
    └── BugError                   an exception outside this tree: a bug, not retried

    RunAborted (BaseException)     the watchdog or a signal stops the run
    AccountStopped (BaseException) an account's deadline or lost lease stops that account

Foreign exceptions are translated where each library is called, with the
original chained as ``__cause__``. Messages carry context, never secrets.
"""

from __future__ import annotations

__all__ = [
    "AccountStopped",
    "AuthError",
    "BadDocumentError",
    "BadInputError",
    "BugError",
    "ConfigError",
    "ExitCode",
    "FatalError",
    "InvoiceSyncError",
    "MailQuarantined",
    "MalformedMailError",
    "NetworkError",
    "OperationTimeout",
    "ProtocolError",
    "QuotaError",
    "RateLimitedError",
    "RunAborted",
    "SchemaMismatch",
    "ServerError",
    "StoreBusyError",
    "TransientError",
    "UnsafeXmlError",
    "WorkerCrashed",
    "WorkerMemoryError",
    "WorkerTimeout",
]


class InvoiceSyncError(Exception):
    """Base of every error invoicesync raises on purpose."""

    #: Short machine-readable kind, stored with failed items and shown by ``status``.
    kind = "error"

    def __init__(self, message: str, *, stage: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.stage = stage

    def __str__(self) -> str:
        return self.message


class FatalError(InvoiceSyncError):
    """Retrying cannot help; an operator has to act."""

    kind = "fatal"


class TransientError(InvoiceSyncError):
    """The same operation may succeed later."""

    kind = "transient"


class ConfigError(FatalError):
    """Invalid configuration; ``key`` names the offending setting when known."""

    kind = "config"

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message, stage="config")
        self.key = key


class AuthError(FatalError):
    kind = "auth"


class QuotaError(FatalError):
    kind = "quota"


class ProtocolError(FatalError):
    kind = "protocol"


class BadInputError(FatalError):
    """This one item can never succeed; the run goes on with the others."""

    kind = "bad_input"


class MalformedMailError(BadInputError):
    kind = "malformed_mail"


class BadDocumentError(BadInputError):
    """A broken, encrypted or otherwise unreadable document."""

    kind = "bad_document"


class UnsafeXmlError(BadInputError):
    """XML that uses DTDs or entities, or exceeds the size and depth limits."""

    kind = "unsafe_xml"


class WorkerMemoryError(BadInputError):
    """Parsing one item needed more memory than a worker process may use."""

    kind = "memory"


class SchemaMismatch(BadInputError):
    """The model's answer is not a valid invoice; ``detail`` says why (asked again once)."""

    kind = "schema_mismatch"

    def __init__(self, detail: str, *, stage: str | None = None) -> None:
        super().__init__(detail, stage=stage)
        self.detail = detail


class MailQuarantined(BadInputError):
    """A mail that used up its attempts without finishing: set aside, not worked again."""

    kind = "quarantined"


class NetworkError(TransientError):
    kind = "network"


class OperationTimeout(TransientError):
    kind = "timeout"


class RateLimitedError(TransientError):
    """Rate limited; ``retry_after`` is the server's requested wait in seconds, if any."""

    kind = "rate_limited"

    def __init__(
        self, message: str, *, retry_after: float | None = None, stage: str | None = None
    ) -> None:
        super().__init__(message, stage=stage)
        self.retry_after = retry_after


class ServerError(TransientError):
    kind = "server"


class StoreBusyError(TransientError):
    kind = "store_busy"


class WorkerTimeout(OperationTimeout):
    """One item outlived its wall-clock limit in a worker process, which was killed."""

    kind = "timeout"


class WorkerCrashed(TransientError):
    """The worker process died while working an item (a signal, a crash in C code)."""

    kind = "crashed"


class BugError(InvoiceSyncError):
    """An exception outside this tree, met where an item was worked: a bug to fix.

    The item fails for good with its traceback logged once; retrying would only
    meet the same bug again (``invoicesync retry`` brings it back after a fix).
    """

    kind = "bug"


class RunAborted(BaseException):
    """Raised inside a run when the watchdog, a deadline or a signal stops it.

    Derives from ``BaseException`` so that no ``except Exception`` in a stage can
    swallow the stop. ``exit_code`` is the process exit code the CLI should use.
    """

    def __init__(self, reason: str, *, exit_code: int = 4, status: str = "aborted") -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code
        self.status = status


class AccountStopped(BaseException):
    """Raised inside an account's work to stop it (its deadline, a lost lease).

    Control flow, like ``RunAborted``: its remaining items stay pending, the other
    accounts go on. ``status`` is the account's status in the summary.
    """

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ExitCode:
    """The process's exit codes (README: Exit codes)."""

    OK = 0
    PENDING = 1  # some work failed transiently and waits for the next run
    USAGE = 2  # configuration or command line
    FATAL = 3  # an account or endpoint needs an operator
    ABORTED = 4  # the watchdog stopped the run
