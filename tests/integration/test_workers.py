"""Several worker processes share the accounts through PostgreSQL (``run --worker``).

Real components only: worker processes of the CLI, the local PostgreSQL, a real Dovecot
holding the mailboxes, and for the kill test a slow loopback model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from invoicesync.store.db import Database
from invoicesync.store.schema import Account, Document, Lease, Message, Run, Status
from tests.conftest import EXAMPLES
from tests.dovecot import Dovecot
from tests.helpers import consistency_problems, exported
from tests.openai_server import OpenAIServer, invoice_reply

SAMPLE = sorted((EXAMPLES / "mailbox" / "cur").iterdir())
MAILS = SAMPLE[:6]


def _config(
    tmp_path: Path, dovecot: Dovecot, db_url: str, users: list[tuple[str, str]], extra: str = ""
) -> Path:
    accounts = "".join(
        f"""
[[accounts]]
name = "{name}"
imap_host = "{dovecot.host}"
imap_port = {dovecot.tls_port}
ca_file = "{dovecot.ca_file}"
username = "{name}"
password = "{password}"
"""
        for name, password in users
    )
    config = tmp_path / "c.toml"
    config.write_text(
        f"""
[database]
url = "{db_url}"
[storage]
dir = "{tmp_path / "docs"}"
[retries]
time_scale = 0
[leases]
ttl = 2
[run]
parallel_accounts = 2
{extra}
{accounts}""",
        encoding="utf-8",
    )
    return config


def _users(dovecot: Dovecot, count: int, mails: list[Path]) -> list[tuple[str, str]]:
    users = []
    for _ in range(count):
        user = dovecot.new_user("w")
        for path in mails:
            dovecot.append(user.name, "INBOX", path.read_bytes())
        users.append((user.name, user.password))
    return users


def _worker(config: Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("INVOICESYNC_")}
    return subprocess.Popen(
        [sys.executable, "-m", "invoicesync", "--config", str(config), "run", "--worker"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**base, **(env or {})},
    )


def _worked(db_url: str) -> Counter[str]:
    """How many times each account was worked, over every run recorded."""
    database = Database(db_url)
    try:
        with database.session() as session:
            counts = session.scalars(select(Run.counts)).all()
    finally:
        database.dispose()
    return Counter(
        summary["account"]
        for run in counts
        for summary in run.get("accounts", [])
        if summary["account"] != "(backlog)" and summary["status"] != "skipped"
    )


def _expected_invoices(tmp_path: Path) -> int:
    """Live invoices of the same mails read from a local Maildir by a plain run."""
    maildir = tmp_path / "expected" / "mb"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for path in MAILS:
        (maildir / "cur" / path.name).write_bytes(path.read_bytes())
    url = f"sqlite:///{tmp_path / 'expected' / 'db.sqlite'}"
    (tmp_path / "expected" / "c.toml").write_text(
        f'[database]\nurl = "{url}"\n[storage]\ndir = "{tmp_path / "expected" / "docs"}"\n'
        f'[[accounts]]\nname = "local"\nmaildir = "{maildir}"\n',
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "invoicesync", "--config", "c.toml", "-q", "run"],
        cwd=tmp_path / "expected",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return sum('"duplicate_of": null' in record for _, record in exported(url))


def _live_invoices(db_url: str) -> list[str]:
    return [record for _, record in exported(db_url) if '"duplicate_of": null' in record]


def test_three_workers_share_thirty_accounts_each_worked_once(
    dovecot: Dovecot, pg_url: str, tmp_path: Path
) -> None:
    users = _users(dovecot, 30, MAILS)
    config = _config(tmp_path, dovecot, pg_url, users)
    workers = [_worker(config, tmp_path) for _ in range(3)]
    outputs = [worker.communicate(timeout=240) for worker in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-2000:]
    worked = _worked(pg_url)
    assert worked == Counter({name: 1 for name, _ in users})  # each once, none twice
    per_worker = [out.count(" ok ") for out, _ in outputs]
    assert sum(per_worker) >= 30 and sum(1 for n in per_worker if n) >= 2, per_worker
    assert consistency_problems(pg_url, tmp_path / "docs") == []
    database = Database(pg_url)
    with database.session() as session:
        messages = session.scalar(select(func.count()).select_from(Message))
        undone = session.scalar(
            select(func.count()).select_from(Document).where(Document.status.in_(Status.WORKABLE))
        )
        leases_left = session.scalar(select(func.count()).select_from(Lease))
    database.dispose()
    assert (messages, undone, leases_left) == (30 * len(MAILS), 0, 0)
    live = _live_invoices(pg_url)
    assert len(live) == _expected_invoices(tmp_path)  # the same mails in 30 boxes: stored once
    numbers = Counter(json.loads(r)["invoice_number"] for r in live)
    numbers.pop(None, None)  # offline reading found no number: no business key to compare
    assert all(count == 1 for count in numbers.values()), numbers

    # The cycle is over: workers started again find nothing due and touch nothing.
    again = [_worker(config, tmp_path) for _ in range(3)]
    for worker in again:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err[-2000:]
    assert _worked(pg_url) == worked


@pytest.fixture
def slow_model(openai_server: OpenAIServer) -> OpenAIServer:
    openai_server.default = invoice_reply(delay=0.4)
    return openai_server


def test_a_killed_workers_account_is_finished_by_another(
    dovecot: Dovecot, pg_url: str, tmp_path: Path, slow_model: OpenAIServer
) -> None:
    """SIGKILL mid-account: its lease and claims run out, another worker finishes, no duplicates."""
    users = _users(dovecot, 2, SAMPLE)
    extra = (
        f'[openai]\napi_key_env = "WORKERS_TEST_KEY"\nbase_url = "{slow_model.url}"\n'
        "max_concurrency = 1"
    )
    config = _config(tmp_path, dovecot, pg_url, users, extra)
    env = {"WORKERS_TEST_KEY": "sk-test-workers-0123456789"}
    victim = _worker(config, tmp_path, env)
    deadline = time.monotonic() + 60
    while slow_model.calls < 3 and time.monotonic() < deadline:
        assert victim.poll() is None, victim.communicate()[1][-2000:]
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    database = Database(pg_url)
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Lease)) >= 1  # left behind
        claimed = session.scalar(
            select(func.count()).select_from(Document).where(Document.claim_owner.is_not(None))
        )
    assert claimed >= 1
    survivor = _worker(config, tmp_path, env)
    _, err = survivor.communicate(timeout=180)
    assert survivor.returncode == 0, err[-2000:]
    with database.session() as session:
        undone = session.scalar(
            select(func.count()).select_from(Document).where(Document.status.in_(Status.WORKABLE))
        )
        not_done = session.scalar(
            select(func.count()).select_from(Account).where(Account.last_done_at.is_(None))
        )
        leases_left = session.scalar(select(func.count()).select_from(Lease))
    database.dispose()
    assert (undone, not_done, leases_left) == (0, 0, 0)
    assert consistency_problems(pg_url, tmp_path / "docs") == []
    documents = Counter(json.loads(r)["document_sha256"] for r in _live_invoices(pg_url))
    assert all(count == 1 for count in documents.values()), documents
