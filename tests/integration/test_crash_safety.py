"""Nothing lost, nothing twice: SIGKILL at random moments, overlapping runs, SIGTERM mid-run."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from invoicesync.store.schema import Document, Message, Run
from tests.conftest import EXAMPLES, write_config
from tests.helpers import big_maildir, cli, consistency_problems, exported, start_cli


def _config(tmp_path: Path, db_url: str, maildir: Path, name: str = "c.toml") -> Path:
    return write_config(tmp_path / name, db_url=db_url, storage=tmp_path / "docs", maildir=maildir)


@pytest.fixture
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    """The invoices a clean, uninterrupted run exports from the sample mailbox."""
    base = tmp_path_factory.mktemp("reference")
    url = f"sqlite:///{base / 'ref.db'}"
    assert (
        cli("--config", str(_config(base, url, EXAMPLES / "mailbox")), "run", cwd=base).returncode
        == 0
    )
    return exported(url)


def _progress(db_url: str) -> tuple[int, int]:
    """(messages recorded, documents whose extraction has an outcome)."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            messages = connection.scalar(select(func.count()).select_from(Message)) or 0
            extracted = connection.scalar(
                select(func.count()).select_from(Document).where(Document.status != "pending")
            )
            return int(messages), int(extracted or 0)
    finally:
        engine.dispose()


def _crash_cycle(db_url: str, tmp_path: Path, reference: list[tuple[str, str]], kills: int) -> None:
    """Rounds of: empty database, 5 runs each SIGKILLed at a random moment, then a run to
    completion whose export must equal the reference exactly.

    Eight copies of the sample (192 mails): mails commit in batches of up to 50, so the
    sample alone would give a run too few commit points for kills to land between them.
    Kills fall between the end of start-up and the end of a whole run.
    """
    config = _config(tmp_path, db_url, big_maildir(tmp_path / "big", copies=8))
    chance = random.Random(kills)
    assert cli("--config", str(config), "db", "upgrade", cwd=tmp_path).returncode == 0
    started = time.monotonic()
    assert cli("--config", str(config), "status", cwd=tmp_path).returncode == 0
    startup = time.monotonic() - started  # interpreter, imports, database: no pipeline work yet
    started = time.monotonic()
    assert cli("--config", str(config), "run", cwd=tmp_path).returncode == 0
    span = time.monotonic() - started  # one whole run, interpreter start included
    full = _progress(db_url)
    mid_run = 0
    for round_ in range((kills + 4) // 5):
        _reset(db_url)
        for _ in range(5):
            before = _progress(db_url)
            process = start_cli("--config", str(config), "run", cwd=tmp_path)
            time.sleep(chance.uniform(startup, span))
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=30)
            after = _progress(db_url)
            mid_run += after != before and after != full
            assert consistency_problems(db_url, tmp_path / "docs") == [], f"round {round_}"
        final = cli("--config", str(config), "run", cwd=tmp_path)
        assert final.returncode == 0, final.stdout + final.stderr
        assert consistency_problems(db_url, tmp_path / "docs") == []
        assert exported(db_url) == reference, f"round {round_}"
    assert mid_run >= 1, "the kills never landed in the middle of a run's work"


def _reset(db_url: str) -> None:
    engine = create_engine(db_url)
    with engine.begin() as connection:
        for table in ("invoices", "message_documents", "documents", "messages", "leases"):
            if engine.dialect.has_table(connection, table):
                connection.execute(text(f"DELETE FROM {table}"))
    engine.dispose()


def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(
    db_url: str, tmp_path: Path, reference: list[tuple[str, str]]
) -> None:
    """20 SIGKILLs at random moments, then a full run: exactly the expected invoices."""
    _crash_cycle(db_url, tmp_path, reference, kills=20)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_many_more_times(
    db_url: str, tmp_path: Path, reference: list[tuple[str, str]]
) -> None:
    """The same with 150 kills."""
    _crash_cycle(db_url, tmp_path, reference, kills=150)


def test_two_runs_started_together_store_everything_once(
    db_url: str, tmp_path: Path, reference: list[tuple[str, str]]
) -> None:
    """Two runs at the same moment on one database: no duplicates, nothing missing."""
    config = _config(tmp_path, db_url, EXAMPLES / "mailbox")
    assert cli("--config", str(config), "db", "upgrade", cwd=tmp_path).returncode == 0
    processes = [start_cli("--config", str(config), "run", cwd=tmp_path) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert exported(db_url) == reference
    assert consistency_problems(db_url, tmp_path / "docs") == []


def test_sigterm_mid_run_stops_cleanly_and_the_rerun_completes(
    db_url: str, tmp_path: Path, reference: list[tuple[str, str]]
) -> None:
    """SIGTERM between items: exit 143, run marked interrupted, consistent; a rerun finishes."""
    maildir = big_maildir(tmp_path / "big", copies=25)
    config = _config(tmp_path, db_url, maildir)
    assert cli("--config", str(config), "db", "upgrade", cwd=tmp_path).returncode == 0
    engine = create_engine(db_url)
    process = start_cli("--config", str(config), "run", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                if connection.scalar(select(func.count()).select_from(Message)) >= 20:
                    break
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 143, stderr
        assert "stopped by SIGTERM" in stderr
        with engine.connect() as connection:
            status = connection.scalar(select(Run.status).order_by(Run.id.desc()).limit(1))
            done = connection.scalar(select(func.count()).select_from(Message))
        assert status == "interrupted"
        assert done < len(list((maildir / "cur").iterdir()))
    finally:
        engine.dispose()
    assert consistency_problems(db_url, tmp_path / "docs") == []
    rerun = cli("--config", str(config), "run", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert exported(db_url) == reference
