"""One hostile document costs its own time limit, never the run: real runs, real workers.

Each run is a real ``invoicesync`` process; its worker processes are found by a
marker in their environment, so a test can kill one, or check that none outlives
its run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from invoicesync.store.schema import Document, Message
from tests.conftest import EXAMPLES, write_config
from tests.helpers import cli, exported
from tests.hostile import fanout_pdf, flate_bomb_pdf

pytestmark = pytest.mark.timeout(180)

LIMIT = 3  # timeouts.extract_document in these tests, seconds


def _mail_with_pdf(maildir: Path, name: str, pdf: bytes, *, number: int = 0) -> None:
    mail = EmailMessage()
    mail["From"] = "billing@hostile.example"
    mail["To"] = "ap@company.example"
    mail["Subject"] = f"Invoice {name}"
    mail["Message-ID"] = f"<{name}.{number}@hostile.example>"
    mail["Date"] = "Tue, 01 Dec 2026 10:00:00 +0000"
    mail.set_content("Your invoice is attached.")
    mail.add_attachment(pdf, maintype="application", subtype="pdf", filename=f"{name}.pdf")
    # "0000" sorts first: the hostile mail is the first one every run meets.
    (maildir / "cur" / f"0000{number}.{name}:2,").write_bytes(bytes(mail))


def _sample_with(tmp_path: Path, name: str, pdf: bytes | None) -> Path:
    maildir = tmp_path / "mailbox"
    shutil.copytree(EXAMPLES / "mailbox", maildir)
    if pdf is not None:
        _mail_with_pdf(maildir, name, pdf)
    return maildir


def _config(tmp_path: Path, db_url: str, maildir: Path, extra: str = "") -> Path:
    settings = f"[timeouts]\nextract_document = {LIMIT}\n[retries]\nitem_attempts = 2\n{extra}"
    return write_config(
        tmp_path / "c.toml",
        db_url=db_url,
        storage=tmp_path / "docs",
        maildir=maildir,
        extra=settings,
    )


def _document(db_url: str, filename: str) -> Document:
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(select(Document).where(Document.filename == filename)).one()
            return row  # type: ignore[return-value]
    finally:
        engine.dispose()


def _start(config: Path, cwd: Path, marker: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOICESYNC_")}
    env["ISOLATION_TEST_MARK"] = marker
    return subprocess.Popen(
        [sys.executable, "-m", "invoicesync", "--config", str(config), "run", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _marked(marker: str) -> list[int]:
    """Live (non-zombie) processes carrying ``marker`` in their environment."""
    found = []
    needle = f"ISOLATION_TEST_MARK={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def _no_survivors(marker: str, within: float = 5.0) -> list[int]:
    limit = time.monotonic() + within
    while (left := _marked(marker)) and time.monotonic() < limit:
        time.sleep(0.1)
    return left


def _wait_in_flight(db_url: str, filename: str, process: subprocess.Popen[str]) -> None:
    """Until the document has been started (its attempt counted) by the running ``process``."""
    limit = time.monotonic() + 60
    while time.monotonic() < limit:
        assert process.poll() is None, process.communicate()
        try:
            document = _document(db_url, filename)
        except Exception:
            document = None
        if (
            document is not None
            and document.started_by
            and document.started_by.split(":")[1] == str(process.pid)
        ):
            time.sleep(0.5)  # well inside the worker's parse
            return
        time.sleep(0.1)
    raise AssertionError("the document never got in flight")


@pytest.fixture
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    """The sample's export from a run without any hostile document."""
    base = tmp_path_factory.mktemp("reference")
    url = f"sqlite:///{base / 'ref.db'}"
    config = _config(base, url, EXAMPLES / "mailbox")
    assert cli("--config", str(config), "run", cwd=base).returncode == 0
    return exported(url)


def test_a_hanging_pdf_costs_its_limit_and_is_quarantined_after_its_attempts(
    db_url: str, tmp_path: Path, reference: list[tuple[str, str]]
) -> None:
    config = _config(tmp_path, db_url, _sample_with(tmp_path, "fanout", fanout_pdf()))
    for attempt in (1, 2):
        started = time.monotonic()
        result = cli("--config", str(config), "run", cwd=tmp_path)
        took = time.monotonic() - started
        assert result.returncode in (0, 1), result.stderr
        assert took < LIMIT + 15, took
        document = _document(db_url, "fanout.pdf")
        assert document.attempts == attempt
        assert f"timeout after {LIMIT} s" in (document.last_error or "")
        assert exported(db_url) == reference  # every good invoice, once
    assert document.status == "failed_fatal"
    assert "quarantined after 2 attempts" in (document.last_error or "")
    status = cli("--config", str(config), "status", cwd=tmp_path)
    assert "quarantined after 2 attempts" in status.stdout
    started = time.monotonic()
    third = cli("--config", str(config), "run", cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert time.monotonic() - started < 10
    assert _document(db_url, "fanout.pdf").attempts == 2  # not touched again
    released = cli(
        "--config", str(config), "retry", "--item", f"document:{document.id}", cwd=tmp_path
    )
    assert released.returncode == 0, released.stderr
    again = _document(db_url, "fanout.pdf")
    assert (again.status, again.attempts) == ("pending", 0)


def test_a_decompression_bomb_fails_with_kind_memory_and_spares_the_run(
    tmp_path: Path, reference: list[tuple[str, str]]
) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config = _config(tmp_path, url, _sample_with(tmp_path, "bomb", flate_bomb_pdf(gigabytes=2)))
    peak = _parent_peak_rss(config, tmp_path)
    document = _document(url, "bomb.pdf")
    assert document.last_error is not None and document.last_error.startswith("memory:")
    assert exported(url) == reference
    clean = tmp_path / "clean"
    clean.mkdir()
    url = f"sqlite:///{clean / 'db.sqlite'}"
    baseline = _parent_peak_rss(_config(clean, url, EXAMPLES / "mailbox"), clean)
    assert peak < baseline + 30 * 1024, (peak, baseline)  # KiB: the bomb stayed in its worker


def _parent_peak_rss(config: Path, cwd: Path) -> int:
    """Peak RSS (KiB) of the run's own process, reported by the process itself."""
    code = (
        "import resource, sys\n"
        "from invoicesync.cli import main\n"
        "try:\n"
        "    code = main(sys.argv[1:])\n"
        "finally:\n"
        "    print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOICESYNC_")}
    result = subprocess.run(
        [sys.executable, "-c", code, "--config", str(config), "run"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    return int(result.stderr.rsplit("PEAK ", 1)[1].split()[0])


def test_another_account_is_fully_extracted_in_the_same_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    hostile = tmp_path / "hostile"
    for sub in ("cur", "new", "tmp"):
        (hostile / sub).mkdir(parents=True)
    for number in range(3):
        _mail_with_pdf(
            hostile, f"fanout{number}", fanout_pdf(operators=1_000_000 + number), number=number
        )
    config = _config(tmp_path, url, hostile, extra="[extract]\nprocesses = 2\n")
    with config.open("a", encoding="utf-8") as file:
        file.write(f'[[accounts]]\nname = "clean"\nmaildir = "{EXAMPLES / "mailbox"}"\n')
    started = time.monotonic()
    result = cli("--config", str(config), "run", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 3 * LIMIT + 20
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(select(Document.filename, Document.status)).all()
    engine.dispose()
    statuses = dict(rows)
    assert [statuses[f"fanout{n}.pdf"] for n in range(3)] == ["failed_transient"] * 3
    assert not [name for name, status in rows if status == "pending"]


def test_a_worker_killed_from_outside_fails_its_document_as_crashed(
    tmp_path: Path, reference: list[tuple[str, str]]
) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config = _config(
        tmp_path,
        url,
        _sample_with(tmp_path, "fanout", fanout_pdf()),
        extra="[extract]\nprocesses = 1\n",
    ).as_posix()
    config_path = Path(config)
    config_path.write_text(
        config_path.read_text().replace(f"extract_document = {LIMIT}", "extract_document = 60")
    )
    marker = uuid.uuid4().hex
    process = _start(config_path, tmp_path, marker)
    _wait_in_flight(url, "fanout.pdf", process)
    workers = [pid for pid in _marked(marker) if pid != process.pid and _parent(pid) != process.pid]
    assert len(workers) == 1, workers  # the one worker, a child of the fork server
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    document = _document(url, "fanout.pdf")
    assert document.status == "failed_transient"
    assert "crashed:" in (document.last_error or "") and "SIGKILL" in (document.last_error or "")
    assert exported(url) == reference  # the run went on with a new worker
    assert _no_survivors(marker) == []


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_parent_killed_twice_mid_document_leaves_it_quarantined_on_the_third_run(
    db_url: str, tmp_path: Path
) -> None:
    maildir = _sample_with(tmp_path, "fanout", fanout_pdf())
    config = _config(tmp_path, db_url, maildir)
    config.write_text(
        config.read_text().replace(f"extract_document = {LIMIT}", "extract_document = 60")
    )
    for _ in range(2):
        marker = uuid.uuid4().hex
        process = _start(config, tmp_path, marker)
        _wait_in_flight(db_url, "fanout.pdf", process)
        process.send_signal(signal.SIGKILL)
        # Not reaped yet (a zombie): its workers must see it gone all the same.
        assert _no_survivors(marker) == []
        process.communicate(timeout=30)
    started = time.monotonic()
    third = cli("--config", str(config), "run", cwd=tmp_path)
    assert third.returncode in (0, 1), third.stderr
    assert time.monotonic() - started < 15
    document = _document(db_url, "fanout.pdf")
    assert (document.status, document.attempts) == ("failed_fatal", 2)
    assert "quarantined after 2 attempts that did not finish" in (document.last_error or "")
    rerun = exported(db_url)
    assert len({sha for sha, _ in rerun}) == len(rerun)  # nothing stored twice


@pytest.mark.parametrize(
    ("how", "expected"),
    [("done", 0), ("partial", 1), ("watchdog", 4), ("SIGINT", 130), ("SIGTERM", 143)],
)
def test_no_worker_outlives_its_run(tmp_path: Path, how: str, expected: int) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    hostile = None if how == "done" else fanout_pdf()
    config = _config(tmp_path, url, _sample_with(tmp_path, "fanout", hostile))
    text = config.read_text()
    if how == "watchdog":
        text = text.replace(
            f"extract_document = {LIMIT}", "extract_document = 60\nrun = 4\ngrace = 2"
        )
    elif how.startswith("SIG"):
        text = text.replace(f"extract_document = {LIMIT}", "extract_document = 60")
    config.write_text(text)
    marker = uuid.uuid4().hex
    process = _start(config, tmp_path, marker)
    if how.startswith("SIG"):
        _wait_in_flight(url, "fanout.pdf", process)
        assert len(_marked(marker)) >= 3  # the run, the fork server, a worker at least
        status = cli("--config", str(config), "status", cwd=tmp_path)
        assert "in flight" in status.stdout, status.stdout
        process.send_signal(getattr(signal, how))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == expected, stderr
    assert _no_survivors(marker) == []
    if how == "watchdog":
        document = _document(url, "fanout.pdf")
        assert f"in flight: document:{document.id} (fanout.pdf)" in stderr, stderr


def _hostile_mails(maildir: Path) -> None:
    """A Subject of 21,000 RFC 2047 encoded words, and a From of 1 MB of addresses."""
    storm = " ".join(["=?utf-8?q?Rechnung_?="] * 21_000)
    addresses = ", ".join(f"user{n}@sender.example" for n in range(45_000))
    for name, header in (("storm", f"Subject: {storm}"), ("crowd", f"From: {addresses}")):
        other = "From: a@sender.example" if name == "storm" else "Subject: many senders"
        raw = (
            f"{header}\r\n{other}\r\nTo: ap@company.example\r\n"
            f"Message-ID: <{name}@sender.example>\r\n\r\nSee attachment.\r\n"
        ).encode()
        (maildir / "cur" / f"0000.{name}:2,").write_bytes(raw)


def test_hostile_mails_fail_alone_or_pass_and_every_other_mail_is_stored(
    tmp_path: Path, reference: list[tuple[str, str]]
) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    maildir = _sample_with(tmp_path, "none", None)
    _hostile_mails(maildir)
    config = _config(tmp_path, url, maildir)
    started = time.monotonic()
    result = cli("--config", str(config), "run", cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr
    # Each costs at most its limit twice (in its batch, then alone).
    assert time.monotonic() - started < 4 * LIMIT + 20
    assert exported(url) == reference
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(Message.status, Message.last_error, Message.attempts)
        ).all()
    engine.dispose()
    assert len(rows) == len(list((maildir / "cur").iterdir()))  # every mail has its outcome
    for status, error, attempts in rows:
        assert attempts == 1
        assert status in ("ok", "no_invoice", "failed_transient", "failed_fatal")
        assert not status.startswith("failed") or error
