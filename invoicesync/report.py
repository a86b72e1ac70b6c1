"""Human-readable output of ``run`` and ``status`` (rich tables; plain text when piped)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from invoicesync.pipeline.summary import ModelUsage, RunResult
from invoicesync.store import queries
from invoicesync.store.db import Database

__all__ = ["print_status", "print_summary"]


def _console() -> Console:
    # Wide enough that piped output (cron mail, CI logs) does not wrap columns.
    return Console(width=None if Console().is_terminal else 140)


def print_summary(result: RunResult) -> None:
    table = Table(title=f"run {result.run_id}: {result.status}")
    for column in (
        "account",
        "status",
        "messages seen",
        "new",
        "documents",
        "invoices new",
        "duplicates",
        "needs review",
        "failed",
    ):
        table.add_column(column, justify="left" if column in {"account", "status"} else "right")
    for summary in result.accounts:
        failed = str(summary.failed)
        if summary.retry_later:
            failed += f" ({summary.retry_later} retry later)"
        table.add_row(
            summary.account,
            summary.status,
            str(summary.seen),
            str(summary.new_messages),
            str(summary.documents),
            str(summary.invoices),
            str(summary.duplicates),
            str(summary.needs_review),
            failed,
        )
    console = _console()
    console.print(table)
    for summary in result.accounts:
        if summary.error:
            console.print(f"{summary.account}: {summary.error}", markup=False)
        if summary.transfer:
            counters = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary.transfer.items())
            console.print(f"{summary.account}: imap connections {counters}", markup=False)
        if summary.post_actions:
            console.print(
                f"{summary.account}: after_ingest applied to {summary.post_actions} mail(s)"
            )
    if result.model is not None:
        console.print(model_line(result.model), markup=False)


def model_line(usage: ModelUsage) -> str:
    """One line on what the model cost: calls, cache hits, tokens, estimated cost."""
    cost = "no price configured" if usage.cost_usd is None else f"~${usage.cost_usd:.4f}"
    return (
        f"model {usage.model}: {usage.calls} call(s), {usage.cache_hits} cache hit(s), "
        f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens, "
        f"estimated cost {cost}"
    )


def print_status(database: Database) -> None:
    console = _console()
    with database.session() as session:
        accounts = queries.account_overview(session)
        reconnect = queries.accounts_needing_reconnect(session)
        runs = queries.recent_runs(session)
        items = queries.open_items(session)
    table = Table(title="accounts (messages by status)")
    for column in ("account", "ok", "no_invoice", "failed_transient", "failed_fatal", "pending"):
        table.add_column(column)
    for name, counts in accounts:
        table.add_row(
            name,
            *(
                str(counts.get(c, 0))
                for c in ("ok", "no_invoice", "failed_transient", "failed_fatal", "pending")
            ),
        )
    console.print(table)
    for name, reason in reconnect:
        console.print(f"{name}: NEEDS RECONNECT — {reason}", markup=False)
    table = Table(title="recent runs")
    for column in ("run", "started", "finished", "status", "error"):
        table.add_column(column)
    for run in runs:
        finished = run.finished_at.isoformat(timespec="seconds") if run.finished_at else "-"
        table.add_row(
            str(run.id),
            run.started_at.isoformat(timespec="seconds"),
            finished,
            run.status,
            run.error or "",
        )
    console.print(table)
    if not items:
        console.print("no pending or failed items")
        return
    table = Table(title="pending and failed items")
    for column in ("item", "account", "what", "status", "attempts", "reason"):
        table.add_column(column, overflow="fold")
    for item in items:
        status = item.status
        if item.in_flight_since is not None:
            status = f"in flight since {item.in_flight_since.isoformat(timespec='seconds')}"
        table.add_row(
            f"{item.kind}:{item.id}",
            item.account or "-",
            item.label,
            status,
            str(item.attempts),
            item.error or "",
        )
    console.print(table)
