"""E-invoice XML end to end: one invoice however many copies; hostile XML refused."""

from __future__ import annotations

import http.server
import logging
import threading
import time
import tracemalloc
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select

from invoicesync import load_settings, run
from invoicesync.export import export_invoices, invoice_records
from invoicesync.extract.einvoice import parse_einvoice
from invoicesync.store.db import Database
from invoicesync.store.schema import Document
from tests.conftest import CORPUS, write_config

ZUGFERD = CORPUS / "zugferd-corpus"
UBL_HEAD = b'<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2">'


def _mail(number: int, *parts: tuple[str, str | None, bytes]) -> bytes:
    """A mail with attachments given as (filename, content type or None, bytes)."""
    message = EmailMessage()
    message["From"] = "billing@vendor.example"
    message["To"] = "ap@buyer.example"
    message["Subject"] = f"Invoice mail {number}"
    message["Message-ID"] = f"<{number}@vendor.example>"
    message.set_content("Please find your invoice attached.")
    for filename, content_type, data in parts:
        maintype, subtype = (content_type or "application/octet-stream").split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
        if content_type is None:
            attachment = message.get_payload()[-1]
            del attachment["Content-Type"]
    return message.as_bytes()


def _maildir(root: Path, mails: list[bytes]) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for index, data in enumerate(mails):
        (root / "cur" / f"{1700000000 + index}.M{index}.test:2,S").write_bytes(data)
    return root


def _run(tmp_path: Path, db_url: str, mails: list[bytes], name: str = "mb") -> int:
    maildir = _maildir(tmp_path / name, mails)
    config = write_config(
        tmp_path / f"{name}.toml", db_url=db_url, storage=tmp_path / "docs", maildir=maildir
    )
    return run(load_settings(config)).exit_code


def _records(db_url: str, *, duplicates: bool = False) -> list[dict[str, object]]:
    database = Database(db_url)
    try:
        return invoice_records(database, include_duplicates=duplicates)
    finally:
        database.dispose()


def _xml(name: str) -> bytes:
    return (ZUGFERD / name).read_bytes()


def test_pdf_with_its_xml_then_the_other_syntax_is_one_invoice(db_url: str, tmp_path: Path) -> None:
    """Factur-X PDF + its CII in one mail, later the UBL: one live invoice from XML, a duplicate."""
    pdf = (ZUGFERD / "XR_EN16931_Rechnungskorrektur.pdf").read_bytes()
    cii = _xml("XR_EN16931_Rechnungskorrektur.cii.xml")
    ubl = _xml("XR_EN16931_Rechnungskorrektur.ubl.xml")
    first = _mail(1, ("RK21012345.pdf", "application/pdf", pdf), ("factur-x.xml", "text/xml", cii))
    again = _mail(2, ("RK21012345.xml", "application/octet-stream", ubl))
    assert _run(tmp_path, db_url, [first, again]) == 0
    [live] = _records(db_url)
    truth = parse_einvoice(cii)
    assert truth is not None
    assert live["invoice_number"] == "RK21012345" and live["gross_total"] == "-8.79"
    assert live["provenance"] == truth.provenance.model_dump(mode="json")
    assert [r["filename"] for r in live["renderings"]] == ["RK21012345.pdf"]  # type: ignore[index]
    everything = _records(db_url, duplicates=True)
    [copy] = [r for r in everything if r["duplicate_of"] is not None]
    assert copy["duplicate_of"] == live["id"] and live["duplicates"] == [copy["id"]]
    assert copy["provenance"]["syntax"] == "UBL"  # type: ignore[index]


def test_bare_ubl_first_then_pdf_and_cii_is_still_one_invoice(db_url: str, tmp_path: Path) -> None:
    """The same invoice in either order and syntax is one live invoice."""
    ubl = _xml("XR_EN16931_OEPNV.ubl.xml")
    pdf = (ZUGFERD / "XR_EN16931_OEPNV.pdf").read_bytes()
    cii = _xml("XR_EN16931_OEPNV.cii.xml")
    mails = [
        _mail(1, ("ticket.xml", "application/xml", ubl)),
        _mail(2, ("ticket.pdf", "application/pdf", pdf), ("ticket.xml", None, cii)),
    ]
    assert _run(tmp_path, db_url, mails) == 0
    [live] = _records(db_url)
    assert live["invoice_number"] == "E2018092011804" and len(live["duplicates"]) == 1  # type: ignore[arg-type]
    assert [r["filename"] for r in live["renderings"]] == ["ticket.pdf"]  # type: ignore[index]


def _dump(db_url: str) -> str:
    """Every value in every table, as text."""
    database = Database(db_url)
    metadata = MetaData()
    metadata.reflect(database.engine)
    try:
        with database.engine.connect() as connection:
            return "\n".join(
                repr(row)
                for table in metadata.tables.values()
                for row in connection.execute(table.select())
            )
    finally:
        database.dispose()


@pytest.fixture
def counting_server() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server that records every request it gets."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<!ENTITY leak 'x'>")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


def test_hostile_xml_reads_nothing_connects_nowhere_and_the_run_goes_on(
    db_url: str,
    tmp_path: Path,
    counting_server: tuple[str, list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """XXE (file and http) and entity bombs are refused with reasons; the good invoice is stored."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-4711", encoding="utf-8")
    url, hits = counting_server
    file_xxe = (
        f'<?xml version="1.0"?><!DOCTYPE Invoice [<!ENTITY s SYSTEM "file://{secret}">]>'.encode()
        + UBL_HEAD
        + b"<ID>&s;</ID></Invoice>"
    )
    http_xxe = (
        f'<?xml version="1.0"?><!DOCTYPE Invoice [<!ENTITY % r SYSTEM "{url}/dtd"> %r;]>'.encode()
        + UBL_HEAD
        + b"<ID>1</ID></Invoice>"
    )
    levels = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10 if i else "lol"}">' for i in range(10))
    bomb = (
        f'<?xml version="1.0"?><!DOCTYPE Invoice [{levels}]>'.encode()
        + UBL_HEAD
        + b"<ID>&l9;</ID></Invoice>"
    )
    good = _xml("XR_EN16931_OEPNV.ubl.xml")
    mails = [
        _mail(1, ("a.xml", "application/xml", file_xxe)),
        _mail(2, ("b.xml", "text/xml", http_xxe)),
        _mail(3, ("c.xml", None, bomb)),
        _mail(4, ("good.xml", "application/xml", good)),
    ]
    tracemalloc.start()
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG):
        code = _run(tmp_path, db_url, mails)
    elapsed = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert code in (0, 1)
    assert elapsed < 10 and peak < 100 * 1024 * 1024  # the bomb was never expanded
    assert hits == []
    database = Database(db_url)
    try:
        with database.session() as session:
            failed = {
                d.filename: d.last_error
                for d in session.scalars(select(Document).where(Document.status == "failed_fatal"))
            }
        exported = export_invoices(database, "json", include_duplicates=True)
    finally:
        database.dispose()
    assert set(failed) == {"a.xml", "b.xml", "c.xml"}
    assert all(reason and reason.startswith("unsafe_xml:") for reason in failed.values())
    for text in (exported, _dump(db_url), caplog.text):
        assert "TOP-SECRET-4711" not in text
    assert [r["invoice_number"] for r in _records(db_url)] == ["E2018092011804"]
