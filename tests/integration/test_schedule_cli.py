"""``invoicesync schedule`` as a process: cycles until SIGTERM, a clean stop in or between them."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from invoicesync.store.db import Database
from invoicesync.store.schema import Run
from tests.conftest import EXAMPLES, write_config
from tests.helpers import cli, consistency_problems, exported, start_cli
from tests.openai_server import OpenAIServer, invoice_reply


def _runs(db_url: str) -> list[str]:
    database = Database(db_url)
    try:
        with database.session() as session:
            return list(session.scalars(select(Run.status).order_by(Run.id)))
    except OperationalError:  # the first cycle has not created the tables yet
        return []
    finally:
        database.dispose()


def _wait_for(condition: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _stop(process: subprocess.Popen[str], *, within: float) -> tuple[int, str, str]:
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    out, err = process.communicate(timeout=within + 10)
    assert time.monotonic() - started < within, "did not stop in time"
    return process.returncode, out, err


def test_cycles_every_interval_until_sigterm(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config = write_config(
        tmp_path / "c.toml",
        db_url=db_url,
        storage=tmp_path / "docs",
        maildir=EXAMPLES / "mailbox",
        extra="[schedule]\njitter = 0",
    )
    process = start_cli("--config", str(config), "schedule", "--every", "2s", cwd=tmp_path)
    try:
        _wait_for(lambda: len(_runs(db_url)) >= 3, timeout=30)
    finally:
        code, out, err = _stop(process, within=5)
    assert code == 0, err
    statuses = _runs(db_url)
    # None left "running": done, or the cycle SIGTERM caught was stopped cleanly.
    assert len(statuses) >= 3 and set(statuses) <= {"ok", "interrupted"}, statuses
    assert statuses[:2] == ["ok", "ok"] and statuses.count("interrupted") <= 1
    assert len(re.findall(r"run \d+: ok", out)) == statuses.count("ok")  # a summary per cycle
    assert len([p for p in exported(db_url) if '"duplicate_of": null' in p[1]]) == 13
    assert consistency_problems(db_url, tmp_path / "docs") == []


def test_once_exits_with_the_cycle_code(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.toml",
        db_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        storage=tmp_path / "docs",
        maildir=EXAMPLES / "mailbox",
    )
    done = cli("--config", str(config), "--quiet", "schedule", "--once", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # --quiet: no summary


def test_a_bad_interval_is_a_config_error(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.toml",
        db_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        storage=tmp_path / "docs",
        maildir=EXAMPLES / "mailbox",
    )
    done = cli("--config", str(config), "schedule", "--every", "often", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "schedule.every" in done.stderr


@pytest.fixture
def slow_model(openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> OpenAIServer:
    """A model that takes 1 s per answer: a cycle over the sample lasts several seconds."""
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-test-schedule-0123456789")
    openai_server.default = invoice_reply(delay=1.0)
    return openai_server


def test_sigterm_within_a_cycle_stops_after_the_current_item(
    tmp_path: Path, slow_model: OpenAIServer
) -> None:
    """The cycle ends gracefully (run 'interrupted'), the loop ends, a later run completes."""
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    extra = (
        f'[openai]\napi_key_env = "TEST_OPENAI_KEY"\nbase_url = "{slow_model.url}"\n'
        "max_concurrency = 1"
    )
    config = write_config(
        tmp_path / "c.toml",
        db_url=db_url,
        storage=tmp_path / "docs",
        maildir=EXAMPLES / "mailbox",
        extra=extra,
    )
    process = start_cli("--config", str(config), "schedule", "--every", "1h", cwd=tmp_path)
    try:
        _wait_for(lambda: slow_model.calls >= 1, timeout=30)
        # Meanwhile a second process finds the account claimed and says so.
        other = cli("--config", str(config), "run", cwd=tmp_path)
        assert other.returncode == 0, other.stderr
        assert "skipped" in other.stdout and "another run is working this account" in other.stdout
    finally:
        code, _, err = _stop(process, within=5)
    assert code == 0, err
    assert slow_model.calls < 7  # it did not go on with the rest of the documents
    statuses = _runs(db_url)
    assert statuses[0] == "interrupted", statuses
    assert consistency_problems(db_url, tmp_path / "docs") == []
    slow_model.default = invoice_reply()
    done = cli("--config", str(config), "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert consistency_problems(db_url, tmp_path / "docs") == []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_run_writes_its_metrics_to_the_textfile(tmp_path: Path) -> None:
    textfile = tmp_path / "prom" / "invoicesync.prom"
    config = write_config(
        tmp_path / "c.toml",
        db_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        storage=tmp_path / "docs",
        maildir=EXAMPLES / "mailbox",
        extra=f'[metrics]\ntextfile = "{textfile}"',
    )
    done = cli("--config", str(config), "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    samples = _samples(textfile.read_text(encoding="utf-8"))
    sample = (("account", "sample"),)
    assert samples[("invoicesync_invoices_total", sample)] == 13
    assert samples[("invoicesync_duplicates_total", sample)] == 1
    assert samples[("invoicesync_runs_total", (("status", "ok"),))] == 1
    assert samples[("invoicesync_last_run_exit_code", ())] == 0
    assert ("invoicesync_last_success_timestamp_seconds", sample) in samples
    failures = {k[1]: v for k, v in samples.items() if k[0] == "invoicesync_failures_total"}
    assert sum(failures.values()) == 4  # the sample's decoys, by stage and class
    assert failures[(("account", "sample"), ("class", "malformed_mail"), ("stage", "ingest"))] == 2


def test_schedule_serves_metrics_that_grow_with_each_cycle(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    port = _free_port()
    config = write_config(
        tmp_path / "c.toml",
        db_url=db_url,
        storage=tmp_path / "docs",
        maildir=EXAMPLES / "mailbox",
        extra=f"[schedule]\njitter = 0\n[metrics]\nport = {port}",
    )
    process = start_cli("--config", str(config), "schedule", "--every", "1s", cwd=tmp_path)
    try:
        # The third run row exists once the second cycle (and its metrics) is done.
        _wait_for(lambda: len(_runs(db_url)) >= 3, timeout=30)
        answer = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        code, _, err = _stop(process, within=5)
    assert code == 0, err
    samples = _samples(answer.text)
    assert samples[("invoicesync_runs_total", (("status", "ok"),))] >= 2
    assert samples[("invoicesync_invoices_total", (("account", "sample"),))] == 13
    with pytest.raises(requests.ConnectionError):  # the server stopped with the scheduler
        requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def _cycle_processes(scheduler: int) -> list[int]:
    """The scheduler's cycle child processes alive now."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == scheduler and stat[0] != "Z" and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


def test_the_scheduler_outlives_cycles_that_are_aborted_or_killed(tmp_path: Path) -> None:
    """A hostile document makes each cycle overrun its run limit, and one cycle's process is
    SIGKILLed: the scheduler goes on with its cycles and still stops cleanly."""
    from tests.hostile import fanout_pdf
    from tests.integration.test_isolation import _mail_with_pdf

    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    maildir = tmp_path / "mailbox"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    _mail_with_pdf(maildir, "fanout", fanout_pdf())
    config = write_config(
        tmp_path / "c.toml",
        db_url=db_url,
        storage=tmp_path / "docs",
        maildir=maildir,
        extra="[schedule]\njitter = 0\n[timeouts]\nrun = 3\ngrace = 1\nextract_document = 60\n"
        "[retries]\nitem_attempts = 50",
    )
    process = start_cli("--config", str(config), "schedule", "--every", "1s", cwd=tmp_path)
    try:
        _wait_for(lambda: _runs(db_url)[:2] == ["aborted", "aborted"], timeout=40)
        _wait_for(lambda: len(_runs(db_url)) >= 3 and _cycle_processes(process.pid), timeout=20)
        (child,) = _cycle_processes(process.pid)
        os.kill(child, signal.SIGKILL)
        killed = len(_runs(db_url))
        _wait_for(lambda: len(_runs(db_url)) > killed, timeout=20)  # the next cycle began
        assert process.poll() is None
    finally:
        code, _, err = _stop(process, within=8)
    assert code == 0, err
    assert "killed by SIGKILL" in err
    assert _cycle_processes(process.pid) == []
