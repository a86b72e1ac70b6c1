"""Prometheus metrics of runs: what came in, what failed where, what the model cost.

A batch run (``invoicesync run`` from cron or a systemd timer) lives too briefly to be
scraped, so after the run its metrics go to a sink: a file for node_exporter's textfile
collector, and/or a Pushgateway. A scheduled process can instead serve ``/metrics`` itself;
its counters then accumulate over the cycles of that process.

Metrics are a side channel: a sink that is down or misconfigured costs a warning in the
log, never the run (:func:`publish` returns warnings instead of raising).

Every :class:`RunMetrics` has its own ``CollectorRegistry``, never prometheus_client's
global one: two instances (tests, a restarted scheduler loop) cannot collide, and the
process's own Python/GC collectors are not pushed along with the run's numbers.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from http.client import HTTPException
from pathlib import Path
from typing import Protocol
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    push_to_gateway,
    start_http_server,
    write_to_textfile,
)
from prometheus_client.exposition import basic_auth_handler, default_handler
from prometheus_client.parser import text_string_to_metric_families

from invoicesync.errors import (
    AuthError,
    ConfigError,
    InvoiceSyncError,
    NetworkError,
    OperationTimeout,
    ProtocolError,
    ServerError,
)
from invoicesync.pipeline.summary import RunResult

__all__ = ["MetricsSinks", "RunMetrics", "publish"]

_LAST_SUCCESS = "invoicesync_last_success_timestamp_seconds"


class MetricsSinks(Protocol):
    """Where :func:`publish` sends metrics: the ``[metrics]`` settings section.

    A protocol (read-only members) so this module needs nothing from ``config``.
    """

    @property
    def textfile(self) -> Path | None: ...
    @property
    def pushgateway(self) -> str: ...
    @property
    def job(self) -> str: ...


class RunMetrics:
    """The metrics of the runs of one process, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._messages = Counter(
            "invoicesync_messages", "New messages ingested.", ["account"], registry=r
        )
        self._documents = Counter(
            "invoicesync_documents", "Documents found in new messages.", ["account"], registry=r
        )
        self._invoices = Counter(
            "invoicesync_invoices", "New invoices stored.", ["account"], registry=r
        )
        self._duplicates = Counter(
            "invoicesync_duplicates",
            "Invoices already stored from another document.",
            ["account"],
            registry=r,
        )
        self._failures = Counter(
            "invoicesync_failures",
            "Failed items by stage and error class (transient ones included).",
            ["account", "stage", "class"],
            registry=r,
        )
        self._runs = Counter("invoicesync_runs", "Runs by final status.", ["status"], registry=r)
        self._model_calls = Counter(
            "invoicesync_model_calls",
            "Model requests sent, re-asks and retries included.",
            registry=r,
        )
        self._model_tokens = Counter(
            "invoicesync_model_tokens", "Model tokens used.", ["type"], registry=r
        )
        for kind in ("prompt", "completion"):
            self._model_tokens.labels(kind)
        self._cache_hits = Counter(
            "invoicesync_model_cache_hits",
            "Documents answered from the model cache instead of the model.",
            registry=r,
        )
        # Created on the first known cost: a 0 would claim "free" when the price is unknown.
        self._cost: Counter | None = None
        self._duration = Gauge(
            "invoicesync_run_duration_seconds", "Duration of the last run.", registry=r
        )
        self._last_run = Gauge(
            "invoicesync_last_run_timestamp_seconds", "When the last run finished.", registry=r
        )
        self._exit_code = Gauge(
            "invoicesync_last_run_exit_code",
            "Exit code of the last run: 0 ok, 1 items pending, 3 fatal, 4 aborted.",
            registry=r,
        )
        self._last_success = Gauge(
            _LAST_SUCCESS,
            "When the account last finished a run with status ok.",
            ["account"],
            registry=r,
        )
        self._pending = Gauge(
            "invoicesync_items_left_pending",
            "Items the last run left for a later one (transient failures, open breakers).",
            ["account"],
            registry=r,
        )

    def observe(
        self, result: RunResult, *, duration: float, finished_at: float | None = None
    ) -> None:
        """Record one run: counters add up over calls, gauges describe the latest run.

        Every account of ``result`` gets its counters even when they stay 0, so a quiet
        account is visible as 0 rather than absent. ``finished_at`` defaults to now.
        """
        finished = time.time() if finished_at is None else finished_at
        self._pending.clear()  # accounts no longer configured must not linger
        for account in result.accounts:
            name = account.account
            self._messages.labels(name).inc(account.new_messages)
            self._documents.labels(name).inc(account.documents)
            self._invoices.labels(name).inc(account.invoices)
            self._duplicates.labels(name).inc(account.duplicates)
            for key, count in account.failures.items():
                stage, _, kind = key.partition("/")
                self._failures.labels(name, stage, kind or "unknown").inc(count)
            self._pending.labels(name).set(account.retry_later + account.left_pending)
            if account.status == "ok":
                self._last_success.labels(name).set(finished)
        self._runs.labels(result.status).inc()
        model = result.model
        if model is not None:
            self._model_calls.inc(model.calls)
            self._model_tokens.labels("prompt").inc(model.prompt_tokens)
            self._model_tokens.labels("completion").inc(model.completion_tokens)
            self._cache_hits.inc(model.cache_hits)
            if model.cost_usd is not None:
                if self._cost is None:
                    self._cost = Counter(
                        "invoicesync_model_cost_usd",
                        "Estimated model cost in USD, from the configured prices.",
                        registry=self.registry,
                    )
                self._cost.inc(model.cost_usd)
        self._duration.set(duration)
        self._last_run.set(finished)
        self._exit_code.set(result.exit_code)

    def remember_success(self, last_success: Mapping[str, float]) -> None:
        """Carry over older last-success times for accounts without a newer one.

        A batch process starts empty; without this, one failed run would drop the
        account's ``last_success`` sample, and an alert on its age would go silent
        exactly when it should fire.
        """
        current = {
            sample.labels["account"]: sample.value
            for family in self._last_success.collect()
            for sample in family.samples
        }
        for account, timestamp in last_success.items():
            if timestamp > current.get(account, float("-inf")):
                self._last_success.labels(account).set(timestamp)

    def write_textfile(self, path: Path) -> None:
        """Write all metrics to ``path`` for node_exporter's textfile collector.

        The file is written beside ``path`` and renamed over it, so the collector never
        reads half a file, and a failed write leaves the previous file as it was. The
        name must end in ``.prom`` for the collector to read it. Raises ``ConfigError``
        when the file cannot be written (permissions, a directory in the way, full disk).
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_to_textfile(str(path), self.registry)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(
                f"cannot write metrics file {path}: {reason}", key="metrics.textfile"
            ) from exc

    def push(
        self,
        url: str,
        *,
        job: str,
        timeout: float,
        grouping_key: dict[str, str] | None = None,
    ) -> None:
        """Replace this job's group on the Pushgateway at ``url`` with these metrics (PUT).

        Credentials in the URL (``https://user:pass@host:9091``) are sent as HTTP basic
        auth and never appear in error messages. ``timeout`` bounds each socket operation.
        Raises a ``TransientError`` (``NetworkError``, ``OperationTimeout``,
        ``ServerError``) or ``AuthError`` / ``ProtocolError``; callers log it and go on —
        a metrics sink that is down must never fail a run.
        """
        gateway, credentials = _parse_gateway(url)
        handler: Callable[..., Callable[[], None]] = default_handler
        if credentials is not None:
            username, password = credentials
            handler = functools.partial(basic_auth_handler, username=username, password=password)
        try:
            push_to_gateway(
                gateway,
                job=job,
                registry=self.registry,
                grouping_key=grouping_key,
                timeout=timeout,
                handler=handler,
            )
        except HTTPError as exc:
            with exc:  # holds the open response
                detail = _first_line(exc.read(300))
            message = f"pushgateway {gateway} answered {exc.code} {exc.reason}{detail}"
            if exc.code in {401, 403}:
                raise AuthError(message, stage="metrics") from exc
            if exc.code >= 500:
                raise ServerError(message, stage="metrics") from exc
            raise ProtocolError(message, stage="metrics") from exc
        except (URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, URLError) else exc
            if isinstance(reason, TimeoutError):
                raise OperationTimeout(
                    f"pushgateway {gateway} did not answer within {timeout:g} s", stage="metrics"
                ) from exc
            text = reason.strerror if isinstance(reason, OSError) else None
            raise NetworkError(
                f"cannot reach pushgateway {gateway}: {text or reason}", stage="metrics"
            ) from exc
        except HTTPException as exc:
            raise ProtocolError(
                f"pushgateway {gateway} sent a broken answer: {type(exc).__name__}",
                stage="metrics",
            ) from exc

    def serve(self, port: int, addr: str = "127.0.0.1") -> Callable[[], None]:
        """Serve ``/metrics`` from a daemon thread; returns the function that stops it.

        For the scheduled mode, where the process lives long enough to be scraped.
        Loopback by default: the numbers name accounts and are not meant for everyone.
        Raises ``ConfigError`` when the address cannot be bound (port in use).
        """
        try:
            server, thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}", key="metrics.port"
            ) from exc

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return stop


def publish(metrics: RunMetrics, settings: MetricsSinks, *, timeout: float) -> list[str]:
    """Send ``metrics`` to every configured sink; one warning per sink that failed.

    Never raises for a sink's failure: the caller logs the warnings and the run's
    result stands. The textfile keeps each account's last success across runs.
    """
    warnings: list[str] = []
    if settings.textfile is not None:
        metrics.remember_success(_read_last_success(settings.textfile))
        try:
            metrics.write_textfile(settings.textfile)
        except InvoiceSyncError as exc:
            warnings.append(f"metrics not written: {exc}")
    if settings.pushgateway:
        try:
            metrics.push(settings.pushgateway, job=settings.job, timeout=timeout)
        except InvoiceSyncError as exc:
            warnings.append(f"metrics not pushed: {exc}")
    return warnings


def _read_last_success(path: Path) -> dict[str, float]:
    """The last-success samples of a previous textfile; nothing if it is missing or garbled."""
    try:
        text = path.read_text(encoding="utf-8")
        return {
            sample.labels["account"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == _LAST_SUCCESS
            for sample in family.samples
            if "account" in sample.labels
        }
    except (OSError, ValueError):
        return {}


def _parse_gateway(url: str) -> tuple[str, tuple[str, str] | None]:
    """(URL without userinfo, (username, password) or None) of a Pushgateway URL.

    The returned URL is both pushed to and shown in messages. It has no query or
    fragment either: prometheus_client appends ``/metrics/job/…`` to it as a string.
    """
    if "://" not in url:
        url = f"http://{url}"  # as prometheus_client does
    parts = urlsplit(url)
    clean = urlunsplit(
        (parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/"), "", "")
    )
    try:
        valid = parts.scheme in {"http", "https"} and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number
        valid = False
    if not valid:
        raise ConfigError(f"not an http(s) URL with a host: {clean}", key="metrics.pushgateway")
    if parts.username is None:
        return clean, None
    return clean, (unquote(parts.username), unquote(parts.password or ""))


def _first_line(body: bytes) -> str:
    """``": <first line of an error body>"``, or nothing: the gateway says what it rejected."""
    lines = body.decode("utf-8", "replace").strip().splitlines()
    return f": {lines[0][:200]}" if lines else ""
