"""The ``invoicesync`` command: arguments, exit codes, one-line errors. No pipeline logic here.

Exit codes: 0 all done; 1 some items failed and stay pending; 2 configuration or
usage error; 3 fatal error (credentials, quota); 4 aborted by a deadline or the
watchdog.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invoicesync import logs, malloc
from invoicesync.config import Settings, config_path, load_settings
from invoicesync.errors import ConfigError, ExitCode, FatalError, InvoiceSyncError, RunAborted
from invoicesync.metrics import RunMetrics
from invoicesync.pipeline.summary import RunResult

if TYPE_CHECKING:
    from invoicesync.resilience.watchdog import StopSwitch
    from invoicesync.store.db import Database

__all__ = ["main", "run_cli"]

EXIT_OK, EXIT_PENDING, EXIT_USAGE, EXIT_FATAL, EXIT_ABORTED = (
    ExitCode.OK,
    ExitCode.PENDING,
    ExitCode.USAGE,
    ExitCode.FATAL,
    ExitCode.ABORTED,
)
log = logging.getLogger("invoicesync")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse exits 2 by itself; keep its message to one line like config errors.
        self.exit(EXIT_USAGE, f"invoicesync: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="invoicesync", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="TOML file (default: $INVOICESYNC_CONFIG, else config/invoicesync.toml)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="errors only: no progress, no summary"
    )
    parser.add_argument(
        "--log-format", choices=["text", "json"], help="log lines as text or JSON ([logging])"
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser("run", help="process every account once")
    run.add_argument(
        "--worker",
        action="store_true",
        help="share the accounts with other workers on this database: claim due accounts,"
        " then pending documents, until none is left (PostgreSQL)",
    )
    schedule = commands.add_parser("schedule", help="run a cycle every so often until stopped")
    schedule.add_argument(
        "--every", metavar="INTERVAL", help="between cycle starts: 90s, 30m, 1h ([schedule])"
    )
    schedule.add_argument(
        "--once", action="store_true", help="one cycle, then exit with its code (cron)"
    )
    commands.add_parser("status", help="accounts, recent runs, pending and failed items")
    retry = commands.add_parser("retry", help="make failed items pending again")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--item", metavar="KIND:ID", help="one item as shown by status, e.g. document:12"
    )
    which.add_argument("--all", action="store_true", help="every failed item")
    invoices = commands.add_parser("invoices", help="stored invoices")
    invoice_commands = invoices.add_subparsers(dest="invoices_command", required=True)
    export = invoice_commands.add_parser("export", help="export every invoice")
    export.add_argument("--format", choices=["csv", "json"], default="json")
    export.add_argument("--output", metavar="FILE", help="write here instead of stdout")
    export.add_argument(
        "--include-duplicates",
        action="store_true",
        help="also list later copies of stored invoices, each with duplicate_of",
    )
    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="apply database migrations")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    malloc.return_large_buffers()  # before the first large buffer
    sys.exit(run_cli(argv))


def run_cli(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(fmt=args.log_format or "text", level=_level(args, "WARNING"))
    try:
        settings = load_settings(config_path(args.config, os.environ))
        logs.register_settings_secrets(settings)
        if args.log_format:
            logging_settings = settings.logging.model_copy(update={"format": args.log_format})
            settings = settings.model_copy(update={"logging": logging_settings})
        logs.configure(
            fmt=settings.logging.format,
            level=_level(args, settings.logging.level),
        )
    except ConfigError as exc:
        print(f"invoicesync: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return _guarded(lambda: _dispatch(args, settings))


def _guarded(command: Callable[[], int]) -> int:
    """``command``'s exit code; a stop or an error of the tree as one line and its code."""
    try:
        return command()
    except ConfigError as exc:
        print(f"invoicesync: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RunAborted as exc:
        print(f"invoicesync: run {exc.status}: {exc.reason}", file=sys.stderr)
        return exc.exit_code
    except FatalError as exc:
        print(f"invoicesync: {exc.kind} error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except InvoiceSyncError as exc:
        print(f"invoicesync: {exc.kind} error: {exc} (try again later)", file=sys.stderr)
        return EXIT_PENDING


def _exit_code(exc: InvoiceSyncError) -> int:
    from invoicesync.pipeline.outcomes import exit_code  # the one outcome policy

    return exit_code(exc)


def _level(args: argparse.Namespace, configured: str) -> int:
    """-q and -v win over the configured level."""
    if args.quiet:
        return logging.ERROR
    if args.verbose:
        return logging.DEBUG if args.verbose > 1 else logging.INFO
    return logging.getLevelName(configured)  # type: ignore[no-any-return]


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "run":
        return _run(settings, quiet=args.quiet, worker=args.worker)
    if args.command == "schedule":
        return _schedule(settings, every=args.every, once=args.once, quiet=args.quiet)
    from invoicesync.store.db import Database

    database = Database(settings.database.url)
    try:
        database.upgrade()
        if args.command == "db":
            print("database is up to date")
            return EXIT_OK
        if args.command == "retry":
            return _retry(database, args.item)
        if args.command == "status":
            from invoicesync.report import print_status

            print_status(database)
            return EXIT_OK
        return _export(database, args.format, args.output, args.include_duplicates)
    finally:
        database.dispose()


def _schedule(settings: Settings, *, every: str | None, once: bool, quiet: bool) -> int:
    from invoicesync.config import parse_interval
    from invoicesync.schedule import Scheduler

    try:
        interval = parse_interval(every or settings.schedule.every)
    except ValueError as exc:
        raise ConfigError(str(exc), key="schedule.every") from None
    metrics = RunMetrics()
    logging_setup = (settings.logging.format, logging.getLogger().level)
    scheduler = Scheduler(
        lambda switch: _cycle(settings, switch, quiet, metrics, logging_setup),
        every=interval,
        jitter=settings.schedule.jitter,
    )
    scheduler.install_signal_handlers()
    stop_serving = None
    if settings.metrics.port:
        stop_serving = metrics.serve(settings.metrics.port, settings.metrics.address)
        log.info("serving /metrics on %s:%d", settings.metrics.address, settings.metrics.port)
    log.info("scheduler started: a cycle every %gs", interval)
    try:
        code = scheduler.loop(once=once)
    finally:
        if stop_serving is not None:
            stop_serving()
    log.info("scheduler stopped after %d cycle(s)", scheduler.cycles)
    return code


def _cycle(
    settings: Settings,
    switch: StopSwitch,
    quiet: bool,
    metrics: RunMetrics,
    logging_setup: tuple[str, int],
) -> int:
    """A scheduler's cycle: one run in a child process (``invoicesync.cycle``).

    Its metrics are the scheduler's: the child reports its result, and a child
    ended by its watchdog (or killed) is recorded from its exit code.
    """
    from invoicesync.cycle import run_in_child

    started = time.monotonic()
    code, report = run_in_child(_cycle_child, (settings, quiet, logging_setup), switch=switch)
    if report is None:
        status = {4: "aborted", 130: "interrupted", 143: "interrupted"}.get(code, "crashed")
        result, duration = RunResult(run_id=0, status=status, forced_exit=code), None
        log.error("cycle ended with exit code %d before reporting its result", code)
    else:
        result, duration = report
    _publish(settings, metrics, result, duration or time.monotonic() - started)
    return code


def _cycle_child(
    report: Callable[[Any], None],
    settings: Settings,
    quiet: bool,
    logging_setup: tuple[str, int],
) -> int:
    """In the cycle's process: one run, its result reported instead of published."""
    logs.configure(fmt=logging_setup[0], level=logging_setup[1])
    logs.register_settings_secrets(settings)
    return _guarded(lambda: _run(settings, quiet=quiet, publish_to=lambda *result: report(result)))


def _run(
    settings: Settings,
    *,
    switch: StopSwitch | None = None,
    quiet: bool = False,
    metrics: RunMetrics | None = None,
    worker: bool = False,
    publish_to: Callable[[RunResult, float], None] | None = None,
) -> int:
    """One run under the watchdog, with SIGTERM/SIGINT handled between items.

    With ``switch`` the caller owns the signal handlers. The run's metrics go to
    the configured sinks whatever its outcome, or to ``publish_to`` (a cycle's
    process hands them to its scheduler).
    """
    from invoicesync.pipeline.runner import Runner
    from invoicesync.report import print_summary
    from invoicesync.resilience.watchdog import StopSwitch, Watchdog
    from invoicesync.store.db import Database

    if switch is None:
        switch = StopSwitch()
        switch.install_signal_handlers()
    runner: Runner | None = None

    def record_abort() -> None:
        if runner is not None and switch.tripped is not None:
            runner.record_abort(switch.tripped.reason)

    # Started before the database is touched: a silent database must not hang the run either.
    watchdog = Watchdog(
        switch, timeout=settings.timeouts.run, grace=settings.timeouts.grace, on_abort=record_abort
    ).start()
    database: Database | None = None
    started = time.monotonic()
    result = RunResult(run_id=0, status="crashed", forced_exit=EXIT_PENDING)
    try:
        database = Database(settings.database.url)
        database.upgrade()
        with _progress(settings, quiet) as progress:
            runner = Runner(settings, database, switch=switch, on_start=progress)
            result = runner.run(worker=worker)
        if not quiet:
            print_summary(result)
        return result.exit_code
    except RunAborted as stop:
        result.status, result.forced_exit = stop.status, stop.exit_code
        raise
    except InvoiceSyncError as exc:
        if switch.tripped is None:
            result.status = "failed"
            result.forced_exit = _exit_code(exc)
            raise
        # The stop caused this error (a closed connection): report the stop, not the symptom.
        result.status, result.forced_exit = switch.tripped.status, switch.tripped.exit_code
        raise switch.tripped from None
    finally:
        watchdog.finish()
        if database is not None:
            database.dispose()
        if publish_to is not None:
            publish_to(result, time.monotonic() - started)
        else:
            _publish(settings, metrics or RunMetrics(), result, time.monotonic() - started)


@contextlib.contextmanager
def _progress(settings: Settings, quiet: bool) -> Iterator[Callable[[RunResult], None] | None]:
    """A live per-account view on an interactive terminal; nothing otherwise."""
    if quiet or not sys.stderr.isatty() or settings.logging.format == "json":
        yield None
        return
    from invoicesync.progress import LiveProgress

    with LiveProgress() as live:
        yield live.attach


def _publish(settings: Settings, metrics: RunMetrics, result: RunResult, duration: float) -> None:
    """Record the run in ``metrics`` and send them where configured; a failed sink only warns."""
    from invoicesync.metrics import publish

    metrics.observe(result, duration=duration)
    for warning in publish(metrics, settings.metrics, timeout=settings.metrics.timeout):
        log.warning("metrics: %s", warning)


def _retry(database: Database, item: str | None) -> int:
    from invoicesync.store.repository import reset_items

    target: tuple[str, int] | None = None
    if item is not None:
        kind, _, number = item.partition(":")
        if kind not in {"message", "document"} or not number.isdigit():
            print("invoicesync: --item takes KIND:ID, e.g. document:12", file=sys.stderr)
            return EXIT_USAGE
        target = (kind, int(number))
    with database.transaction() as session:
        count = reset_items(session, item=target)
    print(f"{count} item(s) will be retried by the next run")
    return EXIT_OK


def _export(database: Database, fmt: str, output: str | None, duplicates: bool) -> int:
    from invoicesync.export import export_invoices

    text = export_invoices(database, fmt, include_duplicates=duplicates)
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_OK
