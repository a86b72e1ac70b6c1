"""What a run reports: one summary per account, and the run's result and exit code."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AccountSummary", "ModelUsage", "RunResult"]


@dataclass
class AccountSummary:
    account: str
    status: str = "ok"  # ok | partial | fatal | needs_reconnect | deadline | skipped
    seen: int = 0
    new_messages: int = 0
    documents: int = 0
    invoices: int = 0
    duplicates: int = 0  # invoices already stored from another document (linked, not live)
    needs_review: int = 0
    failed: int = 0  # items that failed this run (bad input included)
    retry_later: int = 0  # of those, transient: still pending for the next run
    left_pending: int = 0  # not tried: an endpoint's circuit breaker was open
    post_actions: int = 0  # mails flagged / moved / labelled after their work was committed
    transfer: dict[str, int] = field(default_factory=dict)  # IMAP pool and fetch counters
    #: Failures by "stage/kind" (e.g. "extract/rate_limited"), for metrics.
    failures: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    #: What the account is doing now, for the progress display.
    phase: str = "waiting"  # waiting | connecting | scanning | extracting | post-actions | done

    def count_failure(self, stage: str, kind: str) -> None:
        key = f"{stage}/{kind}"
        self.failures[key] = self.failures.get(key, 0) + 1

    def merge(self, other: AccountSummary) -> None:
        """Add ``other``'s counts (one worker's share); its status wins if it is worse."""
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for key, count in other.failures.items():
            self.failures[key] = self.failures.get(key, 0) + count
        if _SEVERITY.get(other.status, 0) > _SEVERITY.get(self.status, 0):
            self.status, self.error = other.status, other.error or self.error
        self.error = self.error or other.error


_SEVERITY = {"ok": 0, "partial": 1, "fatal": 2, "needs_reconnect": 2, "deadline": 3}
_COUNTS = (
    "seen",
    "new_messages",
    "documents",
    "invoices",
    "duplicates",
    "needs_review",
    "failed",
    "retry_later",
    "left_pending",
    "post_actions",
)


@dataclass
class ModelUsage:
    """What the model endpoint cost this run (cache hits cost nothing)."""

    model: str
    calls: int = 0  # requests sent, re-asks and retries included
    cache_hits: int = 0  # documents answered from the cache instead
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None  # estimate from [openai] prices; None without a price


@dataclass
class RunResult:
    run_id: int
    status: str
    accounts: list[AccountSummary] = field(default_factory=list)
    error: str | None = None
    model: ModelUsage | None = None
    #: The process exit code when the run ended early (a signal, a config error …).
    forced_exit: int | None = None

    @property
    def exit_code(self) -> int:
        """0 all done, 1 some items stay pending, 3 fatal, 4 aborted by a deadline."""
        if self.forced_exit is not None:
            return self.forced_exit
        statuses = {a.status for a in self.accounts}
        if self.status == "aborted" or "deadline" in statuses:
            return 4
        if statuses & {"fatal", "needs_reconnect"}:
            return 3
        if "partial" in statuses:
            return 1
        return 0
