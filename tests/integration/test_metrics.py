"""Prometheus metrics: the textfile, a real Pushgateway, sinks that are down, /metrics."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from invoicesync.errors import ConfigError
from invoicesync.metrics import RunMetrics, publish
from invoicesync.pipeline.summary import AccountSummary, ModelUsage, RunResult

if TYPE_CHECKING:  # imported by pytest as a plugin, so that its asserts are rewritten
    from tests.pushgateway import Pushgateway

# The ``pushgateway`` fixture; naming the plugin here too is harmless if conftest.py does.
pytest_plugins = ["tests.pushgateway"]

Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Sinks:
    """Stands in for the ``[metrics]`` settings section."""

    textfile: Path | None = None
    pushgateway: str = ""
    job: str = "invoicesync"


def run_result(*, invoices: int = 3, cost: float | None = 0.25) -> RunResult:
    """Two accounts: ``acme`` fine, ``bank`` partial with failures in two stages."""
    acme = AccountSummary(
        "acme", new_messages=4, documents=5, invoices=invoices, duplicates=1, left_pending=0
    )
    bank = AccountSummary(
        "bank",
        status="partial",
        new_messages=2,
        documents=2,
        failed=3,
        retry_later=2,
        left_pending=1,
        failures={"extract/rate_limited": 2, "ingest/malformed_mail": 1},
    )
    model = ModelUsage(
        "gpt-4o-mini",
        calls=7,
        cache_hits=2,
        prompt_tokens=1000,
        completion_tokens=200,
        cost_usd=cost,
    )
    return RunResult(run_id=1, status="partial", accounts=[acme, bank], model=model)


def samples(text: str) -> dict[tuple[str, Labels], float]:
    """Exposition text → {(sample name, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def value(found: dict[tuple[str, Labels], float], name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def names(found: dict[tuple[str, Labels], float], name: str) -> list[Labels]:
    return [labels for (n, labels) in found if n == name]


def test_textfile_has_the_run(tmp_path: Path) -> None:
    metrics = RunMetrics()
    metrics.observe(run_result(), duration=12.5, finished_at=1_700_000_000.0)
    path = tmp_path / "collector" / "invoicesync.prom"  # the directory is created

    assert publish(metrics, Sinks(textfile=path), timeout=1) == []

    found = samples(path.read_text())
    assert value(found, "invoicesync_invoices_total", account="acme") == 3
    assert value(found, "invoicesync_invoices_total", account="bank") == 0  # seen, so 0
    assert value(found, "invoicesync_messages_total", account="acme") == 4
    assert value(found, "invoicesync_documents_total", account="bank") == 2
    assert value(found, "invoicesync_duplicates_total", account="acme") == 1
    failures = {"account": "bank", "stage": "extract", "class": "rate_limited"}
    assert value(found, "invoicesync_failures_total", **failures) == 2
    failures = {"account": "bank", "stage": "ingest", "class": "malformed_mail"}
    assert value(found, "invoicesync_failures_total", **failures) == 1
    assert len(names(found, "invoicesync_failures_total")) == 2
    assert value(found, "invoicesync_runs_total", status="partial") == 1
    assert value(found, "invoicesync_model_calls_total") == 7
    assert value(found, "invoicesync_model_tokens_total", type="prompt") == 1000
    assert value(found, "invoicesync_model_tokens_total", type="completion") == 200
    assert value(found, "invoicesync_model_cache_hits_total") == 2
    assert value(found, "invoicesync_model_cost_usd_total") == 0.25
    assert value(found, "invoicesync_run_duration_seconds") == 12.5
    assert value(found, "invoicesync_last_run_timestamp_seconds") == 1_700_000_000
    assert value(found, "invoicesync_last_run_exit_code") == 1
    assert value(found, "invoicesync_items_left_pending", account="bank") == 3
    assert value(found, "invoicesync_items_left_pending", account="acme") == 0
    # Only the account whose status is ok has a last success.
    assert names(found, "invoicesync_last_success_timestamp_seconds") == [
        frozenset({("account", "acme")})
    ]
    assert value(found, "invoicesync_last_success_timestamp_seconds", account="acme") == 1.7e9


def test_counters_accumulate_and_gauges_follow_the_last_run(tmp_path: Path) -> None:
    metrics = RunMetrics()
    metrics.observe(run_result(invoices=3), duration=10, finished_at=1000)
    second = run_result(invoices=2)
    second.accounts[1].retry_later = second.accounts[1].left_pending = 0
    metrics.observe(second, duration=4, finished_at=2000)
    metrics.write_textfile(tmp_path / "m.prom")

    found = samples((tmp_path / "m.prom").read_text())
    assert value(found, "invoicesync_invoices_total", account="acme") == 5
    failures = {"account": "bank", "stage": "extract", "class": "rate_limited"}
    assert value(found, "invoicesync_failures_total", **failures) == 4
    assert value(found, "invoicesync_runs_total", status="partial") == 2
    assert value(found, "invoicesync_model_tokens_total", type="prompt") == 2000
    assert value(found, "invoicesync_model_cost_usd_total") == 0.5
    assert value(found, "invoicesync_run_duration_seconds") == 4
    assert value(found, "invoicesync_last_run_timestamp_seconds") == 2000
    assert value(found, "invoicesync_last_success_timestamp_seconds", account="acme") == 2000
    assert value(found, "invoicesync_items_left_pending", account="bank") == 0


def test_a_quiet_run_shows_zeros_and_no_unknown_cost(tmp_path: Path) -> None:
    metrics = RunMetrics()
    result = RunResult(run_id=1, status="ok", accounts=[AccountSummary("acme")])
    metrics.observe(result, duration=0.5)
    metrics.write_textfile(tmp_path / "m.prom")

    found = samples((tmp_path / "m.prom").read_text())
    for name in ("messages", "documents", "invoices", "duplicates"):
        assert value(found, f"invoicesync_{name}_total", account="acme") == 0
    assert value(found, "invoicesync_model_calls_total") == 0
    assert value(found, "invoicesync_model_tokens_total", type="completion") == 0
    assert value(found, "invoicesync_last_run_exit_code") == 0
    assert not names(found, "invoicesync_model_cost_usd_total")  # unknown, not 0


def test_textfile_keeps_last_success_of_earlier_batch_runs(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    first = RunMetrics()  # each batch run is a new process
    first.observe(run_result(), duration=1, finished_at=1000)
    publish(first, Sinks(textfile=path), timeout=1)
    failing = run_result()
    failing.accounts[0].status = "fatal"
    second = RunMetrics()
    second.observe(failing, duration=1, finished_at=2000)
    publish(second, Sinks(textfile=path), timeout=1)

    found = samples(path.read_text())
    assert value(found, "invoicesync_last_success_timestamp_seconds", account="acme") == 1000
    assert value(found, "invoicesync_last_run_timestamp_seconds") == 2000


def test_textfile_write_is_atomic(tmp_path: Path) -> None:
    metrics = RunMetrics()
    metrics.observe(run_result(), duration=1)
    path = tmp_path / "m.prom"
    path.mkdir()  # a directory in the way: the rename fails after the data was written

    with pytest.raises(
        ConfigError, match=r"metrics\.textfile: cannot write metrics file .*m\.prom"
    ):
        metrics.write_textfile(path)
    assert publish(metrics, Sinks(textfile=path), timeout=1)[0].startswith("metrics not written: ")
    assert [p.name for p in tmp_path.iterdir()] == ["m.prom"]  # no temporary file left

    # A failure while rendering leaves the previous file untouched.
    good = tmp_path / "good.prom"
    metrics.write_textfile(good)
    before = good.read_text()

    class Broken:
        def describe(self) -> list[object]:
            return []

        def collect(self) -> list[object]:
            raise RuntimeError("collector bug")

    metrics.registry.register(Broken())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        metrics.write_textfile(good)
    assert good.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.prom", "m.prom"]


def test_push_to_a_real_pushgateway_replaces_the_group(pushgateway: Pushgateway) -> None:
    first = RunMetrics()
    first.observe(run_result(invoices=3), duration=7, finished_at=1000)
    assert publish(first, Sinks(pushgateway=pushgateway.url), timeout=5) == []

    found = samples(pushgateway.metrics_text())
    job = {"job": "invoicesync", "instance": ""}
    assert value(found, "invoicesync_invoices_total", account="acme", **job) == 3
    assert value(found, "invoicesync_invoices_total", account="bank", **job) == 0
    fail = {"account": "bank", "stage": "ingest", "class": "malformed_mail"}
    assert value(found, "invoicesync_failures_total", **fail, **job) == 1
    assert value(found, "invoicesync_model_tokens_total", type="completion", **job) == 200
    assert value(found, "invoicesync_run_duration_seconds", **job) == 7

    # The next batch run pushes only acme: the group is replaced (PUT), not merged or summed.
    second = RunMetrics()
    only_acme = run_result(invoices=2)
    only_acme.accounts = only_acme.accounts[:1]
    second.observe(only_acme, duration=3, finished_at=2000)
    second.observe(only_acme, duration=2, finished_at=3000)  # a cumulative registry
    assert publish(second, Sinks(pushgateway=pushgateway.url + "/"), timeout=5) == []

    found = samples(pushgateway.metrics_text())
    assert value(found, "invoicesync_invoices_total", account="acme", **job) == 4
    assert value(found, "invoicesync_run_duration_seconds", **job) == 2
    assert value(found, "invoicesync_last_success_timestamp_seconds", account="acme", **job) == 3000
    assert not [
        labels
        for labels in names(found, "invoicesync_invoices_total")
        if ("account", "bank") in labels
    ]
    assert not names(found, "invoicesync_failures_total")


def test_pushgateway_down_is_a_warning_without_credentials() -> None:
    metrics = RunMetrics()
    metrics.observe(run_result(), duration=1)
    port = free_port()  # nobody listens here
    url = f"http://user:s3cret@127.0.0.1:{port}/?token=s3cret"

    warnings = publish(metrics, Sinks(pushgateway=url), timeout=2)

    assert len(warnings) == 1
    assert f"http://127.0.0.1:{port}" in warnings[0]
    assert "refused" in warnings[0]
    assert "s3cret" not in warnings[0] and "user" not in warnings[0]


def test_a_bad_pushgateway_url_is_a_warning() -> None:
    warnings = publish(RunMetrics(), Sinks(pushgateway="ftp://u:s3cret@host/x"), timeout=1)
    assert warnings == [
        "metrics not pushed: metrics.pushgateway: not an http(s) URL with a host: ftp://host/x"
    ]


def test_a_silent_pushgateway_is_cut_by_the_timeout(silent_server: tuple[str, int]) -> None:
    host, port = silent_server
    metrics = RunMetrics()
    metrics.observe(run_result(), duration=1)

    started = time.monotonic()
    warnings = publish(metrics, Sinks(pushgateway=f"http://{host}:{port}"), timeout=0.5)

    assert time.monotonic() - started < 1.5
    assert warnings == [
        f"metrics not pushed: pushgateway http://{host}:{port} did not answer within 0.5 s"
    ]


def test_serve_exposes_metrics_until_stopped() -> None:
    metrics = RunMetrics()
    metrics.observe(run_result(), duration=1)
    port = free_port()
    stop = metrics.serve(port)
    try:
        with requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            found = samples(response.text)
        assert value(found, "invoicesync_invoices_total", account="acme") == 3
        with pytest.raises(ConfigError, match=r"metrics\.port: cannot serve metrics"):
            RunMetrics().serve(port)  # the port is taken
    finally:
        stop()
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.settimeout(1)
        probe.connect(("127.0.0.1", port))
