"""The watchdog against silent peers, per-item attempt limits, `retry`, breakers, leases."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import select

from invoicesync.config import AccountSettings, Settings, load_settings
from invoicesync.errors import NetworkError, RunAborted
from invoicesync.models import FolderPosition, MailRef
from invoicesync.pipeline.runner import Runner
from invoicesync.resilience.watchdog import StopSwitch, Watchdog
from invoicesync.store import leases
from invoicesync.store.db import Database
from invoicesync.store.schema import Message, Run
from tests.conftest import EXAMPLES, write_config
from tests.helpers import cli, consistency_problems

SAMPLE_MAIL = sorted((EXAMPLES / "mailbox" / "cur").iterdir())[0].read_bytes()


class PeerSource:
    """A mail source whose messages live behind a TCP peer; the peer here never answers.

    The first ``good`` messages are served locally; fetching the next one blocks in
    ``recv`` on the silent peer — a real blocking socket call, as an IMAP fetch would.
    """

    def __init__(self, account: str, peer: tuple[str, int], good: int, total: int) -> None:
        self.account = account
        self.endpoint: str | None = f"{peer[0]}:{peer[1]}"
        self.peer = peer
        self.good = good
        self.total = total
        self.sock: socket.socket | None = None

    def folders(self) -> Sequence[str]:
        return ["INBOX"]

    def position(self, folder: str) -> FolderPosition | None:
        return None  # like a local source: every scan lists everything

    def after_ingest(self, folder: str, uids: Sequence[int]) -> None:
        pass

    def scan(self, folder: str, position: FolderPosition | None = None) -> Iterator[MailRef]:
        for uid in range(1, self.total + 1):
            yield MailRef(
                account=self.account, folder=folder, key=f"1:{uid}", uidvalidity=1, uid=uid
            )

    def fetch(self, ref: MailRef) -> bytes:
        assert ref.uid is not None
        if ref.uid <= self.good:
            return SAMPLE_MAIL.replace(b"Message-ID: <", b"Message-ID: <%d." % ref.uid, 1)
        self.sock = socket.create_connection(self.peer)
        try:
            self.sock.recv(1)  # blocks: the peer never says a word
        except OSError as exc:
            raise NetworkError(f"connection to {self.endpoint} closed") from exc
        raise NetworkError(f"connection to {self.endpoint} closed")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked recv at once
            self.sock.close()
            self.sock = None


def _settings(tmp_path: Path, db_url: str, extra: str = "") -> Settings:
    config = write_config(
        tmp_path / "c.toml",
        db_url=db_url,
        storage=tmp_path / "docs",
        maildir=EXAMPLES / "mailbox",
        extra=extra,
    )
    return load_settings(config)


def test_run_against_a_silent_database_exits_4_within_timeout_plus_grace(
    tmp_path: Path, silent_server: tuple[str, int]
) -> None:
    """`invoicesync run` with timeouts.run = 2 against a peer that never answers exits 4 in time."""
    host, port = silent_server
    config = write_config(
        tmp_path / "c.toml",
        db_url=f"postgresql+psycopg://postgres@{host}:{port}/silent",
        storage=tmp_path / "docs",
        maildir=EXAMPLES / "mailbox",
        extra="[timeouts]\nrun = 2\ngrace = 1\n",
    )
    started = time.monotonic()
    result = cli("--config", str(config), "run", cwd=tmp_path, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 4, result.stderr
    assert elapsed < 2 + 1 + 2.5  # timeout + grace + interpreter start and exit
    assert "timeouts.run" in result.stderr


def test_watchdog_stops_a_run_blocked_on_a_silent_peer(
    db_url: str, tmp_path: Path, silent_server: tuple[str, int]
) -> None:
    """The watchdog closes the blocked connection; the run is aborted with code 4, consistent."""
    settings = _settings(tmp_path, db_url)
    database = Database(db_url)
    database.upgrade()
    switch = StopSwitch()
    exits: list[int] = []
    runner = Runner(
        settings,
        database,
        switch=switch,
        source_factory=lambda account: PeerSource(account.name, silent_server, good=3, total=6),
    )
    watchdog = Watchdog(switch, timeout=1.0, grace=10, exit=exits.append).start()
    started = time.monotonic()
    try:
        with pytest.raises(RunAborted) as caught:
            runner.run()
    finally:
        watchdog.finish()
    assert time.monotonic() - started < 5
    assert caught.value.exit_code == 4 and exits == []  # stopped cooperatively, no hard exit
    with database.session() as session:
        run = session.scalars(select(Run)).one()
        messages = session.scalars(select(Message.status)).all()
    database.dispose()
    assert run.status == "aborted" and "timeouts.run" in (run.error or "")
    assert messages == ["ok", "ok", "ok"]  # done before the stall; the stalled one not failed
    assert consistency_problems(db_url, tmp_path / "docs") == []


class FailingSource(PeerSource):
    """Every fetch fails with a transient network error."""

    def fetch(self, ref: MailRef) -> bytes:
        raise NetworkError(f"connection to {self.endpoint} refused")


def test_transient_failures_are_retried_next_run_then_parked(db_url: str, tmp_path: Path) -> None:
    """A failing message is retried by later runs, then parked; `retry` revives it."""
    settings = _settings(
        tmp_path, db_url, "[retries]\nitem_attempts = 3\n[breaker]\nthreshold = 50\n"
    )
    database = Database(db_url)
    database.upgrade()

    def one_run() -> tuple[int, list[tuple[str, int]]]:
        runner = Runner(
            settings,
            database,
            source_factory=lambda a: FailingSource(a.name, ("127.0.0.1", 9), 0, 2),
        )
        result = runner.run()
        with database.session() as session:
            rows = session.execute(
                select(Message.status, Message.attempts).order_by(Message.uid)
            ).all()
        return result.exit_code, [(status, attempts) for status, attempts in rows]

    assert one_run() == (1, [("failed_transient", 1)] * 2)
    assert one_run() == (1, [("failed_transient", 2)] * 2)
    assert one_run() == (0, [("failed_fatal", 3)] * 2)
    assert one_run() == (0, [("failed_fatal", 3)] * 2)  # parked: not tried again
    with database.session() as session:
        reasons = session.scalars(select(Message.last_error)).all()
    assert all(r and r.startswith("gave up after 3 attempts: network:") for r in reasons)
    database.dispose()
    config = tmp_path / "c.toml"
    revived = cli("--config", str(config), "retry", "--all", cwd=tmp_path)
    assert revived.returncode == 0 and "2 item(s)" in revived.stdout
    database = Database(db_url)
    assert one_run() == (1, [("failed_transient", 1)] * 2)
    database.dispose()


def test_open_breaker_leaves_the_rest_pending(db_url: str, tmp_path: Path) -> None:
    """3 transient failures in a row open the endpoint's breaker; the rest stays pending.

    The untried mails are on record (pending, no attempt counted), so that the folder
    position passing them cannot make them forgotten.
    """
    settings = _settings(tmp_path, db_url)
    database = Database(db_url)
    database.upgrade()
    runner = Runner(
        settings, database, source_factory=lambda a: FailingSource(a.name, ("127.0.0.1", 9), 0, 5)
    )
    [summary] = runner.run().accounts
    with database.session() as session:
        recorded = session.execute(
            select(Message.status, Message.attempts, Message.last_error).order_by(Message.uid)
        ).all()
    database.dispose()
    assert (summary.failed, summary.retry_later, summary.left_pending) == (3, 3, 2)
    assert summary.status == "partial" and "circuit open for 127.0.0.1:9" in (summary.error or "")
    assert [(status, attempts) for status, attempts, _ in recorded] == [
        ("failed_transient", 1)
    ] * 3 + [("pending", 0)] * 2
    assert all(error.startswith("not tried:") for _, _, error in recorded[3:])


def test_leases_exclude_and_expire(db_url: str) -> None:
    """One owner at a time; renewals keep it; an expired lease is taken; release frees it."""
    database = Database(db_url)
    database.upgrade()
    with database.transaction() as session:
        assert leases.acquire(session, "account:a", "h:1:1", ttl=60)
        assert not leases.acquire(session, "account:a", "other-host:2:2", ttl=60)
        assert leases.renew(session, "account:a", "h:1:1", ttl=60)
        assert not leases.renew(session, "account:a", "other-host:2:2", ttl=60)
        assert leases.acquire(session, "account:b", "h:1:1", ttl=-1)  # born expired
        assert leases.acquire(session, "account:b", "other-host:2:2", ttl=60)
        leases.release(session, "account:a", "h:1:1")
        assert leases.acquire(session, "account:a", "other-host:2:2", ttl=60)
    database.dispose()


def test_lease_of_a_dead_local_process_is_taken_at_once(db_url: str) -> None:
    """A crashed run on this host does not block the account until its lease expires."""
    database = Database(db_url)
    database.upgrade()
    dead = f"{socket.gethostname()}:{2**22 + 12345}:7"  # beyond pid_max: no such process
    with database.transaction() as session:
        assert leases.acquire(session, "account:a", dead, ttl=600)
        assert leases.acquire(session, "account:a", leases.owner_id(8), ttl=60)
        current = leases.holder(session, "account:a")
    database.dispose()
    assert current is not None and current.owner == leases.owner_id(8)


def test_an_unreachable_account_does_not_stop_the_others(tmp_path: Path) -> None:
    """A transient error opening one account leaves it pending (exit 1); the next account runs."""
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    base = _settings(tmp_path, db_url)
    second = AccountSettings(name="second", maildir=EXAMPLES / "mailbox")
    settings = base.model_copy(update={"accounts": [*base.accounts, second]})
    database = Database(db_url)
    database.upgrade()
    opened: list[str] = []

    def factory(account: AccountSettings) -> PeerSource:
        opened.append(account.name)
        if account.name == "sample":
            raise NetworkError("imap.example.com:993 unreachable")
        return PeerSource(account.name, ("127.0.0.1", 9), good=2, total=2)

    result = Runner(settings, database, source_factory=factory).run()
    database.dispose()
    assert sorted(opened) == ["sample", "second"]  # accounts run side by side
    assert [(a.account, a.status) for a in result.accounts] == [
        ("sample", "partial"),
        ("second", "ok"),
    ]
    assert result.exit_code == 1


class SlowSource(PeerSource):
    """Serves sample mails, each taking a little while (a slow server)."""

    def fetch(self, ref: MailRef) -> bytes:
        time.sleep(0.05)
        return super().fetch(ref)


def test_account_deadline_stops_one_account_and_the_others_go_on(
    db_url: str, tmp_path: Path
) -> None:
    """An account past timeouts.account stops between items (rest pending); the next one runs."""
    base = _settings(tmp_path, db_url, "[timeouts]\naccount = 0.4\n")
    second = AccountSettings(name="second", maildir=EXAMPLES / "mailbox")
    settings = base.model_copy(update={"accounts": [*base.accounts, second]})
    database = Database(db_url)
    database.upgrade()

    def factory(account: AccountSettings) -> PeerSource:
        total = 100 if account.name == "sample" else 2
        return SlowSource(account.name, ("127.0.0.1", 9), good=total, total=total)

    result = Runner(settings, database, source_factory=factory).run()
    with database.session() as session:
        stored = session.scalars(select(Message.status)).all()
    database.dispose()
    slow, fast = result.accounts
    assert slow.status == "deadline" and 0 < slow.new_messages < 100
    assert (fast.status, fast.new_messages) == ("ok", 2)
    assert result.exit_code == 4
    assert len(stored) == slow.new_messages + 2 and set(stored) == {"ok"}
    assert consistency_problems(db_url, tmp_path / "docs") == []
