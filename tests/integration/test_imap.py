"""IMAP ingestion against a real Dovecot: TLS modes, incremental sync, post-actions, timeouts."""

from __future__ import annotations

import threading
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from invoicesync import load_settings, run
from invoicesync.mail import imap_source
from invoicesync.pipeline.runner import RunResult
from invoicesync.pipeline.sources import open_source
from invoicesync.resilience.timeouts import Deadline
from invoicesync.store.db import Database
from invoicesync.store.schema import Message
from tests.conftest import EXAMPLES, write_config
from tests.dovecot import Dovecot, ImapUser, SilentImap
from tests.helpers import exported
from tests.link_site import PDF as LINKED_PDF
from tests.link_site import Site, link_mails

SAMPLE = sorted((EXAMPLES / "mailbox" / "cur").iterdir())
INSTANT = "[retries]\ntime_scale = 0\n"


def _imap_config(
    tmp_path: Path,
    dovecot: Dovecot,
    user: ImapUser,
    *,
    security: str = "starttls",
    extra_account: str = "",
    extra: str = "",
    name: str = "c.toml",
) -> Path:
    port = dovecot.tls_port if security == "ssl" else dovecot.plain_port
    allow = "allow_insecure = true\n" if security == "none" else ""
    config = tmp_path / name
    config.write_text(
        f"""
[database]
url = "sqlite:///{tmp_path / "db.sqlite"}"
[storage]
dir = "{tmp_path / "docs"}"
{INSTANT}
{extra}
[[accounts]]
name = "billing"
imap_host = "{dovecot.host}"
imap_port = {port}
security = "{security}"
{allow}ca_file = "{dovecot.ca_file}"
username = "{user.name}"
password = "{user.password}"
{extra_account}
""",
        encoding="utf-8",
    )
    return config


def _fill(dovecot: Dovecot, user: ImapUser, mails: list[Path] = SAMPLE) -> None:
    for path in mails:
        data = path.read_bytes()
        if data[:1].isalpha():  # the junk "mail" has no headers: Dovecot would store it anyway
            dovecot.append(user.name, "INBOX", data)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    """What the local sample mailbox yields: IMAP must yield exactly the same invoices."""
    base = tmp_path_factory.mktemp("ref")
    url = f"sqlite:///{base / 'ref.db'}"
    config = write_config(
        base / "c.toml", db_url=url, storage=base / "docs", maildir=EXAMPLES / "mailbox"
    )
    assert run(load_settings(config)).exit_code == 0
    return exported(url)


def _run(config: Path) -> RunResult:
    return run(load_settings(config))


@pytest.mark.parametrize("security", ["none", "starttls", "ssl"])
def test_ingests_the_sample_over_each_transport(
    dovecot: Dovecot,
    imap_user: ImapUser,
    tmp_path: Path,
    security: str,
    reference: list[tuple[str, str]],
) -> None:
    """Plain, STARTTLS and TLS (private CA) all ingest exactly the local sample's invoices."""
    _fill(dovecot, imap_user)
    result = _run(_imap_config(tmp_path, dovecot, imap_user, security=security))
    assert result.exit_code == 0, result.accounts
    assert exported(f"sqlite:///{tmp_path / 'db.sqlite'}") == reference


def test_second_run_fetches_no_bodies_and_post_action_flags(
    dovecot: Dovecot, imap_user: ImapUser, tmp_path: Path
) -> None:
    """after_ingest=flag marks each done mail on the server; a rerun fetches nothing."""
    _fill(dovecot, imap_user)
    config = _imap_config(tmp_path, dovecot, imap_user, extra_account='after_ingest = "flag"\n')
    first = _run(config)
    [summary] = first.accounts
    assert first.exit_code == 0 and summary.invoices == 13
    assert summary.transfer["bodies_fetched"] == summary.seen  # each new mail fetched once
    flags = dovecot.flags(imap_user.name, "INBOX")
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with database.session() as session:
        done = {
            m.uid
            for m in session.scalars(
                select(Message).where(Message.status.in_(["ok", "no_invoice"]))
            )
        }
    database.dispose()
    assert {uid for uid, f in flags.items() if "\\Flagged" in f} == done
    assert all("\\Seen" not in f for f in flags.values())  # BODY.PEEK never marks mail read
    second = _run(config)
    [again] = second.accounts
    assert (again.seen, again.new_messages, again.transfer["bodies_fetched"]) == (0, 0, 0)
    assert again.transfer["bytes_fetched"] == 0


def test_selective_fetch_skips_big_non_pdf_attachments(
    dovecot: Dovecot, imap_user: ImapUser, tmp_path: Path
) -> None:
    """A mail with a 2 MB image and a small PDF costs the PDF's bytes, not the image's."""
    from email.message import EmailMessage

    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@b.example", "c@d.example", "Scan"
    message["Message-ID"] = "<big@b.example>"
    message.set_content("Invoice and photo attached.")
    message.add_attachment(
        b"\xff\xd8\xff" + bytes(2_000_000), maintype="image", subtype="jpeg", filename="photo.jpg"
    )
    pdf = (EXAMPLES / "documents" / "saeco.pdf").read_bytes()
    message.add_attachment(pdf, maintype="application", subtype="pdf", filename="saeco.pdf")
    dovecot.append(imap_user.name, "INBOX", message.as_bytes())
    result = _run(_imap_config(tmp_path, dovecot, imap_user))
    [summary] = result.accounts
    assert summary.invoices == 1
    assert summary.transfer["bytes_fetched"] < len(pdf) * 1.5 + 20_000


def test_move_post_action_and_uidvalidity_reset(
    dovecot: Dovecot, imap_user: ImapUser, tmp_path: Path
) -> None:
    """move: takes done mails out of INBOX; after a UIDVALIDITY reset nothing is stored twice."""
    _fill(dovecot, imap_user, SAMPLE[:6])
    config = _imap_config(
        tmp_path, dovecot, imap_user, extra_account='after_ingest = "move:Invoices.Done"\n'
    )
    first = _run(config)
    assert first.exit_code == 0 and first.accounts[0].post_actions == 6
    assert dovecot.messages(imap_user.name, "INBOX") == {}
    assert len(dovecot.messages(imap_user.name, "Invoices.Done")) == 6
    before = exported(f"sqlite:///{tmp_path / 'db.sqlite'}")
    # The same mails come back (a restore) and the folder's UIDVALIDITY changes.
    _fill(dovecot, imap_user, SAMPLE[:6])
    dovecot.reset_uidvalidity(imap_user.name, "INBOX")
    second = _run(_imap_config(tmp_path, dovecot, imap_user, name="d.toml"))
    [summary] = second.accounts
    assert summary.invoices == 0 and summary.transfer["bodies_fetched"] == 0
    assert exported(f"sqlite:///{tmp_path / 'db.sqlite'}") == before


def test_wrong_password_is_fatal_for_its_account_only(
    dovecot: Dovecot, imap_user: ImapUser, tmp_path: Path
) -> None:
    """Bad credentials: that account fails fatally, not retried; a local account still runs."""
    config = _imap_config(
        tmp_path,
        dovecot,
        imap_user._replace(password="wrong"),
        extra_account=f'\n[[accounts]]\nname = "local"\nmaildir = "{EXAMPLES / "mailbox"}"\n',
    )
    started = time.monotonic()
    result = _run(config)
    assert time.monotonic() - started < 10
    statuses = {a.account: a.status for a in result.accounts}
    assert statuses == {"billing": "fatal", "local": "ok"} and result.exit_code == 3
    assert result.accounts[0].transfer["failed"] == 1  # no retry of a refused login


@pytest.mark.parametrize("mode", ["no_greeting", "stalls_at_login", "stalls_after_login"])
def test_a_silent_server_costs_no_more_than_its_timeouts(
    silent_imap: SilentImap, tmp_path: Path, mode: str
) -> None:
    """Whatever the stall, the account gives up after its operation timeouts; exit 1."""
    host, port = getattr(silent_imap, mode)
    config = tmp_path / "c.toml"
    config.write_text(
        f"""
[database]
url = "sqlite:///{tmp_path / "db.sqlite"}"
[storage]
dir = "{tmp_path / "docs"}"
[retries]
time_scale = 0
[timeouts]
imap_connect = 0.5
imap_login = 0.5
imap_search = 0.5
imap_fetch = 0.5
[[accounts]]
name = "silent"
imap_host = "{host}"
imap_port = {port}
security = "none"
allow_insecure = true
username = "u"
password = "p"
""",
        encoding="utf-8",
    )
    started = time.monotonic()
    result = _run(config)
    elapsed = time.monotonic() - started
    [summary] = result.accounts
    assert summary.status == "partial" and result.exit_code == 1
    assert elapsed < 5 * 1.5 + 2  # at most 5 connection attempts of ~1 s each


def test_failed_post_action_loses_nothing_and_is_retried(
    dovecot: Dovecot, imap_user: ImapUser, tmp_path: Path
) -> None:
    """A post-action the server refuses keeps the invoices; the next run applies the action."""
    _fill(dovecot, imap_user, SAMPLE[:4])
    # Dovecot has no Gmail labels: the STORE X-GM-LABELS is refused.
    refused = _run(
        _imap_config(
            tmp_path, dovecot, imap_user, extra_account='after_ingest = "label:invoices"\n'
        )
    )
    [summary] = refused.accounts
    assert summary.invoices == 4 and summary.post_actions == 0 and refused.exit_code == 1
    assert not any("\\Flagged" in f for f in dovecot.flags(imap_user.name, "INBOX").values())
    retried = _run(
        _imap_config(
            tmp_path, dovecot, imap_user, name="d.toml", extra_account='after_ingest = "flag"\n'
        )
    )
    [again] = retried.accounts
    assert retried.exit_code == 0 and again.post_actions == 4
    assert again.transfer["bodies_fetched"] == 0  # the mails themselves were not fetched again
    assert all("\\Flagged" in f for f in dovecot.flags(imap_user.name, "INBOX").values())


def test_pool_reuses_checks_and_replaces_dropped_connections(
    dovecot: Dovecot, imap_user: ImapUser
) -> None:
    """An idle connection is checked with NOOP; one the server dropped is discarded and replaced."""
    import threading

    from invoicesync.config import TimeoutSettings
    from invoicesync.errors import NetworkError
    from invoicesync.mail.imap_client import Credentials, ImapConnection, ImapEndpoint
    from invoicesync.mail.imap_pool import NOOP_AFTER, ImapPool
    from invoicesync.resilience.timeouts import Deadline

    endpoint = ImapEndpoint(dovecot.host, dovecot.plain_port, "none")
    credentials = Credentials(imap_user.name, password=SecretStr(imap_user.password))
    now = [0.0]
    pool = ImapPool(
        lambda: ImapConnection.open(endpoint, credentials, TimeoutSettings(), Deadline(30)),
        max_connections=2,
        idle_timeout=300,
        cancel=threading.Event(),
        time_scale=0,
        clock=lambda: now[0],
    )
    with pool.connection() as connection:
        connection.select("INBOX")
        first = connection
    with pool.connection() as connection:
        assert connection is first  # reused without a check: it was just used
    first.last_used = 0.0
    dovecot.kill_connections(imap_user.name)
    now[0] = NOOP_AFTER + 1  # idle long enough to be checked
    with pool.connection() as connection:
        assert connection is not first
        connection.select("INBOX")
    assert (pool.stats.opened, pool.stats.reused, pool.stats.discarded) == (2, 1, 1)
    # A connection that fails in use is discarded, not handed out again.
    dovecot.kill_connections(imap_user.name)
    with pytest.raises(NetworkError), pool.connection() as connection:
        connection.select("INBOX")
    assert pool.stats.discarded == 2
    pool.close_all()


def test_reconnects_back_off_and_give_up_after_five_attempts(tmp_path: Path) -> None:
    """A refused connection is tried 5 times (2, 4, 8, 16 s apart, scaled to 0 here), then fails."""
    import socket
    import threading

    from invoicesync.config import TimeoutSettings
    from invoicesync.errors import NetworkError
    from invoicesync.mail.imap_client import Credentials, ImapConnection, ImapEndpoint
    from invoicesync.mail.imap_pool import ImapPool
    from invoicesync.resilience.timeouts import Deadline

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = ImapEndpoint("127.0.0.1", port, "none")
    pool = ImapPool(
        lambda: ImapConnection.open(
            endpoint, Credentials("u", password=SecretStr("p")), TimeoutSettings(), Deadline(30)
        ),
        max_connections=1,
        idle_timeout=300,
        cancel=threading.Event(),
        time_scale=0,
    )
    with pytest.raises(NetworkError), pool.connection():
        pass
    assert (pool.stats.failed, pool.stats.opened) == (5, 0)


@pytest.mark.parametrize("fillers", [300, pytest.param(3000, marks=pytest.mark.slow)])
def test_sample_among_fillers_once_with_post_action_and_a_free_second_run(
    dovecot: Dovecot,
    imap_user: ImapUser,
    tmp_path: Path,
    fillers: int,
    reference: list[tuple[str, str]],
) -> None:
    """The sample among many plain mails: every invoice once, all flagged, rerun fetches nothing."""
    from email.message import EmailMessage

    for number in range(fillers):
        filler = EmailMessage()
        filler["From"], filler["To"] = f"news{number % 7}@list.example", "ap@buyer.example"
        filler["Subject"], filler["Message-ID"] = f"Newsletter {number}", f"<{number}@list.example>"
        filler.set_content(f"Hello, this is newsletter number {number}.\n")
        dovecot.append(imap_user.name, "INBOX", filler.as_bytes())
    _fill(dovecot, imap_user)
    config = _imap_config(tmp_path, dovecot, imap_user, extra_account='after_ingest = "flag"\n')
    first = _run(config)
    assert first.exit_code == 0
    assert exported(f"sqlite:///{tmp_path / 'db.sqlite'}") == reference
    flags = dovecot.flags(imap_user.name, "INBOX")
    assert sum("\\Flagged" in f for f in flags.values()) == fillers + 22  # 23rd: malformed mail
    second = _run(config)
    assert second.accounts[0].transfer["bodies_fetched"] == 0
    assert second.accounts[0].transfer["bytes_fetched"] == 0


def test_run_with_a_silent_imap_peer_exits_4_within_the_run_timeout(
    silent_imap: SilentImap, tmp_path: Path
) -> None:
    """`invoicesync run` (timeouts.run = 5) beside a silent IMAP server: exit 4 in time, run
    marked aborted, and the local account's invoices stored consistently."""
    import subprocess
    import sys

    host, port = silent_imap.no_greeting
    config = tmp_path / "c.toml"
    config.write_text(
        f"""
[database]
url = "sqlite:///{tmp_path / "db.sqlite"}"
[storage]
dir = "{tmp_path / "docs"}"
[timeouts]
run = 5
[[accounts]]
name = "sample"
maildir = "{EXAMPLES / "mailbox"}"
[[accounts]]
name = "silent"
imap_host = "{host}"
imap_port = {port}
security = "none"
allow_insecure = true
username = "u"
password = "p"
""",
        encoding="utf-8",
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "invoicesync", "--config", str(config), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 4, result.stderr
    assert elapsed < 5 + 30  # timeouts.run + the default grace; in practice ~run + 1 s
    assert "run aborted: run exceeded timeouts.run = 5s" in result.stderr
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with database.session() as session:
        from invoicesync.store.schema import Run

        run_row = session.scalars(select(Run)).one()
    database.dispose()
    assert run_row.status == "aborted"
    assert len(exported(f"sqlite:///{tmp_path / 'db.sqlite'}")) == 14  # 13 live + 1 duplicate


@pytest.mark.parametrize("budget", [imap_source.PREFETCH_BYTES, 1])
def test_mails_of_one_shape_share_a_fetch_within_the_budget(
    dovecot: Dovecot,
    imap_user: ImapUser,
    tmp_path: Path,
    reference: list[tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    budget: int,
) -> None:
    """Messages with the same sections to fetch share a UID FETCH, unless the budget is spent.

    With a budget of one byte, every message is fetched alone; either way the invoices are
    those of the local sample, and every mail's parts are fetched exactly once.
    """
    monkeypatch.setattr(imap_source, "PREFETCH_BYTES", budget)
    _fill(dovecot, imap_user)
    result = _run(_imap_config(tmp_path, dovecot, imap_user))
    [summary] = result.accounts
    assert result.exit_code == 0, result.accounts
    assert exported(f"sqlite:///{tmp_path / 'db.sqlite'}") == reference
    transfer = summary.transfer
    assert transfer["bodies_fetched"] == summary.seen
    if budget == 1:
        assert transfer["fetch_commands"] == transfer["bodies_fetched"]
    else:
        # The sample has plain, multipart/alternative and PDF mails: far fewer shapes than mails.
        assert transfer["fetch_commands"] <= transfer["bodies_fetched"] // 2


def test_mails_skipped_by_an_open_breaker_are_not_passed_by_the_folder_position(
    dovecot: Dovecot, imap_user: ImapUser, tmp_path: Path, site: Site
) -> None:
    """Link mails left untried by an open download breaker, then a mail that is stored:

    the folder position moves past the untried ones, which must still be tried next run.
    """
    site.answer = (500, "text/plain", b"down")
    for path in sorted(link_mails(tmp_path / "mb", f"{site.url}/inv.pdf", 5).glob("cur/*")):
        dovecot.append(imap_user.name, "INBOX", path.read_bytes())
    dovecot.append(imap_user.name, "INBOX", _attached_pdf_mail())
    links = '[links]\nallow_hosts = ["127.0.0.1/32"]\nretries = 1\n'
    config = _imap_config(tmp_path, dovecot, imap_user, extra=links)
    [first] = _run(config).accounts
    assert (first.seen, first.retry_later, first.left_pending) == (6, 3, 2)
    assert len(site.requests) == 3 * 2  # the breaker opened: mails 4 and 5 were not tried
    site.answer = (200, "application/pdf", LINKED_PDF)
    site.requests.clear()
    [second] = _run(config).accounts
    assert second.seen == 0  # nothing new: the position is past all six
    assert sorted(site.requests) == sorted(f"/inv.pdf?token=s3cr3t-{n}" for n in range(5))
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with database.session() as session:
        statuses = session.scalars(select(Message.status)).all()
    database.dispose()
    assert len(statuses) == 6 and set(statuses) <= {"ok", "no_invoice"}


def _attached_pdf_mail() -> bytes:
    message = EmailMessage()
    message["From"], message["Subject"] = "billing@other.example", "Rechnung"
    message.set_content("Anbei die Rechnung.")
    pdf = (EXAMPLES / "documents" / "XR_EN16931_Einfach.pdf").read_bytes()
    message.add_attachment(pdf, "application", "pdf", filename="rechnung.pdf")
    return message.as_bytes()


def test_answers_fetched_ahead_are_dropped_once_passed_over(
    dovecot: Dovecot, imap_user: ImapUser, tmp_path: Path
) -> None:
    """Mails announced but then skipped (stored before, say) do not stay in memory."""
    for number in range(5):
        message = EmailMessage()
        message["From"], message["Subject"] = "a@example.com", f"plain {number}"
        message.set_content(f"Hallo {number}")
        dovecot.append(imap_user.name, "INBOX", message.as_bytes())
    settings = load_settings(_imap_config(tmp_path, dovecot, imap_user))
    source = open_source(
        settings.accounts[0], settings, cancel=threading.Event(), deadline=Deadline(60)
    )
    assert isinstance(source, imap_source.ImapSource)
    try:
        refs = list(source.scan("INBOX"))
        source.prefetch(refs)
        assert b"Hallo 0" in source.fetch(refs[0])
        assert source.fetch_commands == 1 and source._ahead_bytes > 0  # the other four came along
        assert b"Hallo 4" in source.fetch(refs[4])  # 1 to 3 are passed over
        assert source.fetch_commands == 1 and source._ahead_bytes == 0 and not source._ahead
    finally:
        source.close()
