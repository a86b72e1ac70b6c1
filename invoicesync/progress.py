"""A live view of a run on an interactive terminal: one line per account, refreshed.

It reads the accounts' summaries as the pipeline updates them (plain counters, no
callbacks into the stages), on stderr, and disappears when the run ends: the summary
table on stdout is what stays. Nothing is shown when stderr is not a terminal.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.table import Table

from invoicesync.pipeline.summary import RunResult

__all__ = ["LiveProgress"]


class LiveProgress:
    """``with LiveProgress(console) as progress: Runner(..., on_start=progress.attach)``."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._result: RunResult | None = None
        self._live = Live(
            console=self.console,
            get_renderable=self.render,
            refresh_per_second=4,
            transient=True,
        )

    def attach(self, result: RunResult) -> None:
        """Follow ``result``'s account summaries (called by the runner once they exist)."""
        self._result = result

    def render(self) -> Table:
        table = Table(box=None, title=None, show_edge=False, pad_edge=False)
        for column in ("account", "phase", "scanned", "new", "documents", "invoices", "failed"):
            table.add_column(column, justify="left" if column in {"account", "phase"} else "right")
        for summary in self._result.accounts if self._result else []:
            table.add_row(
                summary.account,
                summary.phase if summary.phase != "done" else f"done ({summary.status})",
                str(summary.seen),
                str(summary.new_messages),
                str(summary.documents),
                str(summary.invoices + summary.duplicates),
                str(summary.failed),
            )
        return table

    def __enter__(self) -> LiveProgress:
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._live.stop()
