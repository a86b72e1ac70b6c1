"""Helpers shared by the integration tests: consistency checks, bigger mailboxes, CLI runs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from invoicesync.export import invoice_records
from invoicesync.store.db import Database
from invoicesync.store.schema import Document, InvoiceRow, Message, MessageDocument, Status
from tests.conftest import EXAMPLES


def consistency_problems(db_url: str, storage: Path) -> list[str]:
    """Everything that would make the database inconsistent with itself or the files."""
    problems: list[str] = []
    database = Database(db_url)
    try:
        with database.session() as session:
            for message in session.scalars(select(Message).where(Message.status == Status.OK)):
                links = session.scalar(
                    select(func.count()).where(MessageDocument.message_id == message.id)
                )
                if not links:
                    problems.append(f"message {message.id} is ok but has no documents")
            for document in session.scalars(select(Document)):
                path = storage / document.path
                if not path.exists():
                    problems.append(f"document {document.id} has no file")
                elif hashlib.sha256(path.read_bytes()).hexdigest() != document.sha256:
                    problems.append(f"document {document.id} file does not match its sha256")
            for invoice in session.scalars(select(InvoiceRow)):
                status = session.scalar(
                    select(Document.status).where(Document.id == invoice.document_id)
                )
                if status != Status.OK:
                    problems.append(f"invoice {invoice.id} on a document with status {status}")
    finally:
        database.dispose()
    return problems


def exported(db_url: str) -> list[tuple[str, str]]:
    """The export as comparable (document sha256, record JSON) pairs, duplicates included.

    Database ids differ between databases and runs, so links between invoices are
    rewritten as the linked invoice's document sha256.
    """
    database = Database(db_url)
    try:
        records = invoice_records(database, include_duplicates=True)
    finally:
        database.dispose()
    sha = {record["id"]: record["document_sha256"] for record in records}
    pairs = []
    for record in records:
        data: dict[str, Any] = dict(record)
        data.pop("id")
        data["duplicates"] = sorted(sha[i] for i in data["duplicates"])
        if data["duplicate_of"] is not None:
            data["duplicate_of"] = sha[data["duplicate_of"]]
        pairs.append((data["document_sha256"], json.dumps(data, sort_keys=True)))
    return sorted(pairs)


def big_maildir(target: Path, copies: int) -> Path:
    """A Maildir holding ``copies`` distinct copies of each sample mail (same PDFs)."""
    for sub in ("cur", "new", "tmp"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    sample = sorted((EXAMPLES / "mailbox" / "cur").iterdir())
    for copy in range(copies):
        for number, path in enumerate(sample):
            data = path.read_bytes()
            name = target / "cur" / f"{copy:05d}.{number:03d}.test:2,S"
            name.write_bytes(b"X-Copy: %d\r\n" % copy + data if data[:1].isalpha() else data)
    return target


def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoicesync", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("INVOICESYNC_")},
    )


def start_cli(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "invoicesync", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("INVOICESYNC_")},
    )
