"""Invoices behind links in the mail body, through the whole pipeline, against loopback servers."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from invoicesync import load_settings, run
from invoicesync.export import invoice_records
from invoicesync.store.db import Database
from invoicesync.store.schema import Document, Message, MessageDocument
from tests.link_site import PDF, Site, link_mails


def _config(tmp_path: Path, maildir: Path, *, allow: bool) -> Path:
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
http_connect = 1
http_read = 1
download = 3
[links]
allow_hosts = {'["127.0.0.1/32"]' if allow else "[]"}
retries = 1
[[accounts]]
name = "links"
maildir = "{maildir}"
""",
        encoding="utf-8",
    )
    return config


def _notes(tmp_path: Path) -> list[str]:
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        with database.session() as session:
            messages = session.scalars(select(Message)).all()
    finally:
        database.dispose()
    # Links carry tokens: wherever they are stored, only their redacted form is.
    assert all("s3cr3t" not in link for m in messages for link in m.links)
    return [n for m in messages for n in m.notes]


def test_invoice_behind_an_allowed_link_is_stored_once(site: Site, tmp_path: Path) -> None:
    """Two mails linking the same PDF: downloaded, one invoice, origin link, query redacted."""
    config = _config(tmp_path, link_mails(tmp_path / "mb", f"{site.url}/inv.pdf", 2), allow=True)
    result = run(load_settings(config))
    assert result.exit_code == 0 and result.accounts[0].invoices == 1
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    [record] = invoice_records(database)
    assert record["invoice_number"] == "471102"
    with database.session() as session:
        origins = set(session.scalars(select(MessageDocument.origin)))
        documents = session.scalars(select(Document)).all()
    database.dispose()
    assert origins == {"link"} and len(documents) == 1
    notes = _notes(tmp_path)
    assert len(notes) == 2 and all(": ok (" in n for n in notes)
    assert all("s3cr3t" not in n for n in notes)  # the link's query string is never stored
    assert len(site.requests) == 2


def test_link_without_allow_list_is_refused_without_connecting(site: Site, tmp_path: Path) -> None:
    """The same loopback link with no allow-list: refused, nothing reached the server, exit 0."""
    config = _config(tmp_path, link_mails(tmp_path / "mb", f"{site.url}/inv.pdf"), allow=False)
    result = run(load_settings(config))
    assert result.exit_code == 0 and result.accounts[0].invoices == 0
    assert site.requests == []
    [note] = _notes(tmp_path)
    assert ": refused (" in note and "loopback" in note


def test_login_wall_is_not_a_pdf_and_the_run_goes_on(site: Site, tmp_path: Path) -> None:
    """An HTML page behind the link is recorded as not_a_pdf with its host; no failure."""
    site.answer = (200, "application/pdf", b"<html><body>Please log in</body></html>")
    config = _config(tmp_path, link_mails(tmp_path / "mb", f"{site.url}/inv.pdf"), allow=True)
    result = run(load_settings(config))
    assert result.exit_code == 0
    [note] = _notes(tmp_path)
    assert ": not_a_pdf (" in note and "127.0.0.1" in note


def test_server_errors_keep_the_mail_pending_for_the_next_run(site: Site, tmp_path: Path) -> None:
    """5xx after the retries: the mail stays pending (exit 1); once the server heals, stored."""
    site.answer = (503, "text/plain", b"busy")
    config = _config(tmp_path, link_mails(tmp_path / "mb", f"{site.url}/inv.pdf"), allow=True)
    first = run(load_settings(config))
    assert first.exit_code == 1 and first.accounts[0].retry_later == 1
    assert len(site.requests) == 2  # 1 + [links] retries
    site.answer = (200, "application/pdf", PDF)
    second = run(load_settings(config))
    assert second.exit_code == 0 and second.accounts[0].invoices == 1


def test_breaker_opens_for_a_failing_download_host(site: Site, tmp_path: Path) -> None:
    """After 3 mails fail on one host its breaker opens: the rest stay pending, not failed."""
    site.answer = (500, "text/plain", b"down")
    config = _config(tmp_path, link_mails(tmp_path / "mb", f"{site.url}/inv.pdf", 5), allow=True)
    result = run(load_settings(config))
    [summary] = result.accounts
    assert (summary.retry_later, summary.left_pending) == (3, 2)
    assert "circuit open for http://127.0.0.1" in (summary.error or "")
    assert len(site.requests) == 3 * 2  # 3 mails x (1 + 1 retry); none for the last two
    assert result.exit_code == 1
