"""Figure 5: 1 vs 3 workers (``run --worker``) over the same accounts on PostgreSQL.

``ctx.workers_accounts`` accounts on a real Dovecot, each holding ``SAMPLE_MAILS`` mails of
the sample mailbox (the same in every account: their documents are stored and read once)
and ``OWN_PDFS`` mails with text PDFs of its own. The model is the loopback server of the
tests answering after ``ctx.latency`` seconds, each worker sending at most
``CONCURRENCY`` requests at once, so an account costs real time and the work, not process
start, dominates.

Two identical sets of mailboxes are built, one per measurement. Each measurement runs on a
fresh PostgreSQL database created for it (dropped afterwards): first one worker alone,
then ``WORKERS`` workers started together. The figure is the 3-worker wall time against
the 1-worker wall time (ideal 1/3). Both runs must work each account exactly once (read
from ``runs.counts``) and store each invoice once.

Run alone: ``.venv/bin/python -m bench.figures.scaleout``.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from bench.common import ROOT, Context, Figure, timed
from bench.figures.extraction import (
    API_KEY,
    API_KEY_ENV,
    TimedOpenAIServer,
    distinct_reply,
    invoice_mail,
    invoice_pdf,
    show,
    timeline,
)
from invoicesync.export import invoice_records
from invoicesync.store.db import Database
from invoicesync.store.schema import Document, Run
from tests.dovecot import DOVEADM, DOVECOT, Dovecot, TokenServer

SAMPLE = sorted((ROOT / "examples" / "mailbox" / "cur").iterdir())
SAMPLE_MAILS = 6
OWN_PDFS = 3
CONCURRENCY = 2
WORKERS = 3

__all__ = ["measure", "running_dovecot"]


@contextlib.contextmanager
def running_dovecot() -> Iterator[Dovecot]:
    """A Dovecot 2.3 on free loopback ports, as the tests' session fixture starts it."""
    for binary in (DOVECOT, DOVEADM):
        if not binary.exists():
            raise RuntimeError(f"{binary} is missing: apt-get install -y dovecot-imapd")
    version = subprocess.run(
        [str(DOVECOT), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not version.startswith("2.3."):
        raise RuntimeError(f"tests/dovecot.py writes a Dovecot 2.3 config, found {version!r}")
    tokens = TokenServer()  # Dovecot's OAuth2 config names it; these accounts use passwords
    tokens.start()
    # Short and world-traversable, as in the fixture: UNIX socket names and Dovecot's own users.
    root = Path(tempfile.mkdtemp(prefix="dovecot-"))
    server = Dovecot(root, tokens)
    try:
        try:
            server.start()
        except pytest.fail.Exception as failed:  # the fixture's way of reporting: not ours
            raise RuntimeError(str(failed)) from None
        yield server
    finally:
        server.stop()
        tokens.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards."""
    name = f"bench_scaleout_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin_url.rsplit("/", 1)[0] + f"/{name}"
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _mailboxes(dovecot: Dovecot, accounts: int, prefix: str) -> list[tuple[str, str]]:
    """``accounts`` new users, each with the sample mails and ``OWN_PDFS`` PDFs of its own.

    Account ``a``'s own PDFs are the same in every set, so both measurements read the same.
    """
    sample = [path.read_bytes() for path in SAMPLE[:SAMPLE_MAILS]]
    users = []
    for account in range(accounts):
        user = dovecot.new_user(prefix)
        own = [
            invoice_mail(
                account * OWN_PDFS + n,
                invoice_pdf(f"ACCT{account:03d}-{n}"),
                f"rechnung-{account:03d}-{n}.pdf",
            )
            for n in range(OWN_PDFS)
        ]
        with dovecot.session(user.name) as client:
            for raw in [*sample, *own]:
                client.append("INBOX", raw)
        users.append((user.name, user.password))
    return users


def _config(
    root: Path, dovecot: Dovecot, url: str, server: TimedOpenAIServer, users: list[tuple[str, str]]
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
    config = root / "c.toml"
    config.write_text(
        f"""
[database]
url = "{url}"
[storage]
dir = "{root / "docs"}"
[retries]
time_scale = 0
[leases]
ttl = 10
[run]
parallel_accounts = 2
[links]
enabled = false
[openai]
api_key_env = "{API_KEY_ENV}"
base_url = "{server.url}"
max_concurrency = {CONCURRENCY}
{accounts}""",
        encoding="utf-8",
    )
    return config


def _outcome(url: str, names: list[str]) -> dict[str, Any]:
    """What the workers left in the database: accounts worked, per worker, invoices."""
    database = Database(url)
    try:
        with database.session() as session:
            runs = session.scalars(select(Run.counts)).all()
            documents = len(session.scalars(select(Document.id)).all())
        live = invoice_records(database)
    finally:
        database.dispose()
    per_run = [
        [
            summary["account"]
            for summary in counts.get("accounts", [])
            if summary["account"] != "(backlog)" and summary["status"] != "skipped"
        ]
        for counts in runs
    ]
    worked = Counter(name for accounts in per_run for name in accounts)
    by_document = Counter(record["document_sha256"] for record in live)
    by_number = Counter(
        record.get("invoice_number") for record in live if record.get("invoice_number") is not None
    )
    return {
        "runs": len(runs),
        "accounts_per_worker": sorted((len(accounts) for accounts in per_run), reverse=True),
        "each_account_once": worked == Counter(dict.fromkeys(names, 1)),
        "documents": documents,
        "live_invoices": len(live),
        "invoices_once": all(n == 1 for n in [*by_document.values(), *by_number.values()]),
    }


def _measure_workers(
    ctx: Context, dovecot: Dovecot, workers: int, users: list[tuple[str, str]]
) -> dict[str, Any]:
    """Wall time of ``workers`` worker processes started together, and what they did."""
    root = ctx.work / "scaleout" / f"workers-{workers}"
    root.mkdir(parents=True, exist_ok=True)
    server = TimedOpenAIServer()
    server.default = distinct_reply(ctx.latency)
    server.start()
    try:
        with fresh_database(ctx.pg_admin_url) as url:
            config = _config(root, dovecot, url, server, users)
            command = [ctx.python, "-m", "invoicesync", "--config", str(config), "-q", "run"]
            command.append("--worker")
            env = {API_KEY_ENV: API_KEY}
            with ThreadPoolExecutor(workers) as pool:
                started = time.perf_counter()
                each = list(pool.map(lambda _: timed(command, cwd=root, env=env), range(workers)))
                wall = time.perf_counter() - started
            outcome = _outcome(url, [name for name, _ in users])
    finally:
        server.close()
    spans = server.timeline()
    shape = timeline(spans, CONCURRENCY * workers)
    return {
        "wall_s": round(wall, 3),
        "worker_walls_s": [round(seconds, 3) for seconds, _ in each],
        "worker_peak_rss_kib": [rss for _, rss in each],
        "model_calls": server.calls,
        "max_in_flight": server.max_in_flight,
        "model_span_s": shape.get("span_s"),
        # where the model's span sits in the wall time: before it mail is read and stored,
        # after it the last invoices are stored and the workers agree that nothing is left
        "first_request_at_s": round(spans[0][0] - started, 3) if spans else None,
        "last_answer_at_s": round(max(end for _, end in spans) - started, 3) if spans else None,
        "model_utilisation": shape.get("utilisation"),
        **outcome,
    }


def measure(ctx: Context) -> list[Figure]:
    """Figure 5: wall time of ``WORKERS`` workers vs one over the same accounts."""
    accounts = ctx.workers_accounts
    with running_dovecot() as dovecot:
        started = time.perf_counter()
        single_users = _mailboxes(dovecot, accounts, "one")
        shared_users = _mailboxes(dovecot, accounts, "many")
        setup = time.perf_counter() - started
        single = _measure_workers(ctx, dovecot, 1, single_users)
        shared = _measure_workers(ctx, dovecot, WORKERS, shared_users)
    same_invoices = single["live_invoices"] == shared["live_invoices"]
    return [
        Figure(
            name="scaleout_3_workers_vs_1",
            value=shared["wall_s"],
            unit="s",
            baseline=single["wall_s"],
            baseline_name="1 worker",
            target=None,
            note=(
                f"{WORKERS} `run --worker` processes vs 1 over {accounts} Dovecot accounts on a"
                f" fresh PostgreSQL database each; ideal ratio 1/{WORKERS} ="
                f" {1 / WORKERS:.2f}"
            ),
            extra={
                "accounts": accounts,
                "mails_per_account": SAMPLE_MAILS + OWN_PDFS,
                "own_pdfs_per_account": OWN_PDFS,
                "latency_s": ctx.latency,
                "max_concurrency_per_worker": CONCURRENCY,
                "parallel_accounts": 2,
                "ideal_ratio": round(1 / WORKERS, 3),
                "mailbox_setup_s": round(setup, 3),
                "each_account_once": single["each_account_once"] and shared["each_account_once"],
                "invoices_once": (
                    single["invoices_once"] and shared["invoices_once"] and same_invoices
                ),
                "one_worker": single,
                f"{WORKERS}_workers": shared,
            },
        )
    ]


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as scratch:
        show(measure(Context(work=Path(scratch))))
