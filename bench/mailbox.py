"""Loopback mail for the benchmarks: a Dovecot, deterministic mailboxes, an invoice site.

The IMAP server is the test suite's own: :class:`tests.dovecot.Dovecot` (the repository
root is on ``sys.path`` when the bench runs as ``python -m bench``). It needs nothing from
pytest at run time but ``pytest.fail`` on a broken start, which raises ``Failed`` here too.

Mailboxes are written straight into the user's Maildir (``mail_location =
maildir:<mail_dir>/%u``: INBOX is ``<mail_dir>/<user>/cur``), which takes seconds for 50k
messages where APPEND would take minutes; :meth:`BenchServer.warm` then lets Dovecot index
them and cache what clients ask for, before anything is timed. The same ``seed``, count
and :class:`Mix` give the same bytes on every machine.
"""

from __future__ import annotations

import base64
import hashlib
import imaplib
import os
import random
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import ROOT

if TYPE_CHECKING:
    from tests.dovecot import Dovecot

__all__ = [
    "BenchServer",
    "InvoiceSite",
    "Mailbox",
    "Mix",
    "write_config",
]

DOCUMENT_DIRS = (ROOT / "examples" / "documents", ROOT / "tests" / "corpus")
MB = 1024 * 1024
_EPOCH = 1_700_000_000  # Maildir name timestamps: same digit count for any mailbox size
_VOCABULARY = (
    "meeting agenda project update please review attached notes quarterly report team "
    "schedule call tomorrow thanks regards budget proposal draft feedback customer order "
    "delivery shipment tracking account password reset newsletter offer weekend sale "
    "conference travel hotel booking confirmation reminder deadline contract renewal "
    "Rechnung Lieferung Angebot Termin facture livraison commande bedankt vergadering"
)
_WORDS = tuple(_VOCABULARY.split())


@dataclass(frozen=True)
class Mix:
    """What share of a mailbox's messages carry what (the rest are plain text mails).

    ``pdf``: a corpus PDF (``pdf_unique`` of them made byte-unique, the others resent as
    is); ``xml``: a bare e-invoice XML; ``link``: a "download your invoice" link to the
    :class:`InvoiceSite`; ``big``: a 2 MB non-PDF attachment (a quarter of those also carry
    a PDF); ``huge``: that many 20 MB attachments spread over the mailbox (every third one
    a PDF, the others archives and videos).
    """

    pdf: float = 0.17
    pdf_unique: float = 0.75
    xml: float = 0.01
    link: float = 0.02
    big: float = 0.025
    huge: int = 0
    html: float = 0.3  # of plain mails: a text/html alternative with newsletter links


@dataclass
class Mailbox:
    """A filled INBOX on a :class:`BenchServer`."""

    server: BenchServer
    user: str
    password: str
    count: int = 0
    bytes: int = 0  # the sum of RFC822.SIZE: what a full fetch transfers
    kinds: dict[str, int] = field(default_factory=dict)

    def imap_env(self) -> dict[str, str]:
        """How a stdlib baseline client in a child process reaches this mailbox."""
        dovecot = self.server.dovecot
        return {
            "BENCH_IMAP_HOST": dovecot.host,
            "BENCH_IMAP_PORT": str(dovecot.tls_port),
            "BENCH_IMAP_USER": self.user,
            "BENCH_IMAP_PASSWORD": self.password,
            "BENCH_IMAP_CA": str(dovecot.ca_file),
        }

    @property
    def maildir(self) -> Path:
        mail_dir: Path = self.server.dovecot.mail_dir
        return mail_dir / self.user

    def account_toml(self, name: str = "bench") -> str:
        """An ``[[accounts]]`` table for this mailbox over IMAPS (the throwaway CA)."""
        dovecot = self.server.dovecot
        return f"""
[[accounts]]
name = "{name}"
imap_host = "{dovecot.host}"
imap_port = {dovecot.tls_port}
security = "ssl"
ca_file = "{dovecot.ca_file}"
username = "{self.user}"
password = "{self.password}"
"""


def write_config(path: Path, *, work: Path, accounts: str, db_url: str | None = None) -> Path:
    """An invoicesync config: SQLite under ``work`` unless ``db_url``, loopback links allowed.

    Deadlines are raised so a large first ingest is measured, not aborted.
    """
    path.write_text(
        f"""
[database]
url = "{db_url or f"sqlite:///{work / 'invoicesync.db'}"}"
[storage]
dir = "{work / "documents"}"
tokens_dir = "{work / "tokens"}"
[extractor]
kind = "auto"
[timeouts]
run = 3600
account = 3600
[links]
allow_hosts = ["127.0.0.1/32"]
{accounts}""",
        encoding="utf-8",
    )
    return path


# ------------------------------------------------------------------------------ documents


@cache
def _documents(suffix: str) -> tuple[tuple[str, bytes], ...]:
    """Corpus files ending in ``suffix``, one per content (sorted by name: deterministic)."""
    seen: set[str] = set()
    found: list[tuple[str, bytes]] = []
    for path in sorted(p for d in DOCUMENT_DIRS for p in d.rglob(f"*{suffix}")):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest not in seen:
            seen.add(digest)
            found.append((path.name, data))
    if not found:
        raise RuntimeError(f"no {suffix} files in {', '.join(map(str, DOCUMENT_DIRS))}")
    return tuple(found)


@cache
def _base64(data: bytes) -> bytes:
    return base64.encodebytes(data)


@cache
def _blob(size: int, seed: int) -> bytes:
    """``size`` random-looking bytes (incompressible, like a photo or an archive)."""
    return random.Random(seed).randbytes(size)


@cache
def _huge_pdf() -> bytes:
    """A valid ~20 MB PDF: a corpus invoice carrying a 20 MB embedded file (not an e-invoice)."""
    from io import BytesIO

    from pypdf import PdfReader, PdfWriter

    data = next(d for name, d in _documents(".pdf") if name == "saeco.pdf")
    writer = PdfWriter(clone_from=PdfReader(BytesIO(data)))
    writer.add_attachment("scan-archive.bin", _blob(20 * MB - len(data) - 4096, 7))
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


class InvoiceSite:
    """A loopback HTTP server: ``GET /invoice/<n>.pdf`` answers corpus PDF ``n % count``."""

    def __init__(self) -> None:
        pdfs = _documents(".pdf")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stem = self.path.rsplit("/", 1)[-1].removesuffix(".pdf")
                if not self.path.startswith("/invoice/") or not stem.isdigit():
                    self.send_error(404)
                    return
                body = pdfs[int(stem) % len(pdfs)][1]
                self.send_response(200)
                self.send_header("Content-Type", "application/pdf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# ------------------------------------------------------------------------------ messages


@cache
def _paragraphs() -> tuple[str, ...]:
    rng = random.Random(1)
    out = []
    for _ in range(256):
        lines = [" ".join(rng.choices(_WORDS, k=11)) for _ in range(rng.randint(2, 7))]
        out.append("\n".join(lines).capitalize() + ".")
    return tuple(out)


def _text(rng: random.Random, low: int, high: int) -> str:
    return "\n\n".join(rng.choices(_paragraphs(), k=rng.randint(low, high)))


def _attachment(boundary: str, content_type: str, name: str, data: bytes, *, shared: bool) -> str:
    """A base64 part; the encoding of ``shared`` bytes (in other mails too) is kept for them."""
    encoded = _base64(data) if shared else base64.encodebytes(data)
    return (
        f'--{boundary}\nContent-Type: {content_type}; name="{name}"\n'
        f'Content-Disposition: attachment; filename="{name}"\n'
        f"Content-Transfer-Encoding: base64\n\n{encoded.decode('ascii')}"
    )


def message(seed: int, index: int, mix: Mix, count: int, site_url: str) -> tuple[str, bytes]:
    """Message ``index`` of a mailbox: its kind and raw bytes (LF line ends, as Maildir keeps)."""
    rng = random.Random(f"{seed}:{index}")
    huge_every = count // mix.huge if mix.huge else 0
    roll = rng.random()
    if huge_every and index % huge_every == huge_every // 2:
        kind = "huge"
    elif (roll := roll - mix.pdf) < 0:
        kind = "pdf"
    elif (roll := roll - mix.xml) < 0:
        kind = "xml"
    elif (roll := roll - mix.link) < 0:
        kind = "link"
    elif roll - mix.big < 0:
        kind = "big"
    else:
        kind = "html" if rng.random() < mix.html else "plain"
    boundary = f"=_bench_{index}_{rng.getrandbits(32):08x}"
    subject = {
        "pdf": f"Invoice {rng.randint(10000, 99999)}",
        "xml": f"XRechnung {rng.randint(10000, 99999)}",
        "link": "Your invoice is ready",
        "big": "Photos from the site visit",
        "huge": "Backup of the project files",
    }.get(kind, " ".join(rng.choices(_WORDS, k=rng.randint(2, 6))).capitalize())
    sender = f"{rng.choice(_WORDS).lower()}@{rng.choice(['vendor', 'shop', 'news'])}.example"
    head = (
        f"From: {sender}\nTo: ap@buyer.example\nSubject: {subject}\n"
        f"Date: {_date(index)}\nMessage-ID: <{seed}.{index}@bench.invoicesync>\nMIME-Version: 1.0\n"
    )
    body = _text(rng, 1, 6)
    if kind == "link":
        body += f"\n\nDownload your invoice: {site_url}/invoice/{rng.randint(0, 10**6)}.pdf\n"
    if kind in ("plain",):
        return kind, (head + "Content-Type: text/plain; charset=utf-8\n\n" + body + "\n").encode()
    if kind in ("html", "link"):
        link = f"https://{sender.split('@')[1]}/articles/{index}"
        html = f'<html><body><p>{body}</p><p><a href="{link}">read more</a> '
        html += f'<a href="https://{sender.split("@")[1]}/unsubscribe">unsubscribe</a></p>'
        text = body + f"\n\nRead more: {link}\n"
        parts = (
            f"--{boundary}\nContent-Type: text/plain; charset=utf-8\n\n{text}\n"
            f"--{boundary}\nContent-Type: text/html; charset=utf-8\n\n{html}</body></html>\n"
        )
        return kind, (
            f'{head}Content-Type: multipart/alternative; boundary="{boundary}"\n\n'
            f"{parts}--{boundary}--\n"
        ).encode()
    parts = f"--{boundary}\nContent-Type: text/plain; charset=utf-8\n\n{body}\n"
    if kind == "pdf" or (kind == "big" and rng.random() < 0.25):
        name, data = rng.choice(_documents(".pdf"))
        unique = rng.random() < mix.pdf_unique
        if unique:
            # Same invoice, other bytes: another document to store and extract.
            data = data + f"%bench {seed}.{index}\n".encode()
        parts += _attachment(boundary, "application/pdf", name, data, shared=not unique)
    if kind == "xml":
        name, data = rng.choice(_documents(".xml"))
        parts += _attachment(boundary, "application/xml", name, data, shared=True)
    if kind == "big":
        content_type, name = rng.choice([("application/zip", "site.zip"), ("image/png", "a.png")])
        blob = _blob(2 * MB, index % 4)
        parts += _attachment(boundary, content_type, name, blob, shared=True)
    if kind == "huge":
        number = index // huge_every
        if number % 3 == 0:
            parts += _attachment(boundary, "application/pdf", "big.pdf", _huge_pdf(), shared=True)
        else:
            content_type, name = [("application/zip", "files.zip"), ("video/mp4", "v.mp4")][
                number % 2
            ]
            blob = _blob(20 * MB, 100 + number % 2)
            parts += _attachment(boundary, content_type, name, blob, shared=True)
    return kind, (
        f'{head}Content-Type: multipart/mixed; boundary="{boundary}"\n\n{parts}--{boundary}--\n'
    ).encode()


def _date(index: int) -> str:
    day = 1 + index % 28
    return (
        f"{day:02d} Oct 2026 {index // 3600 % 24:02d}:{index // 60 % 60:02d}:{index % 60:02d} +0000"
    )


# ------------------------------------------------------------------------------ the server


def _dovecot_class() -> type[Dovecot]:
    """The test suite's Dovecot, with a server certificate mbsync accepts.

    mbsync 1.4 refuses a certificate without a common name ("cannot get certificate common
    name"); the fixture's trustme leaf has subjectAltNames only.
    """
    import trustme

    from tests.dovecot import Dovecot

    class BenchDovecot(Dovecot):
        def _write_certificates(self) -> None:
            ca = trustme.CA(organization_name="invoicesync bench CA")
            ca.cert_pem.write_to_path(str(self.ca_file))
            leaf = ca.issue_cert("127.0.0.1", "localhost", common_name="127.0.0.1")
            chain = self.root / "server.pem"
            chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
            key = self.root / "server.key"
            key.write_bytes(leaf.private_key_pem.bytes())
            key.chmod(0o600)

    return BenchDovecot


class BenchServer:
    """A Dovecot (the test suite's) plus the invoice site, for one figure. A context manager."""

    def __init__(self, seed: int = 2026) -> None:
        from tests.dovecot import DOVECOT, TokenServer

        if not os.access(DOVECOT, os.X_OK):
            raise RuntimeError(f"{DOVECOT} is missing: apt-get install -y dovecot-imapd")
        self.seed = seed
        self._tokens = TokenServer()  # the fixture's OAuth2 provider; unused, but Dovecot's
        self._tokens.start()  # config names its introspection URL
        # A short path outside the bench's 0700 scratch directory: Dovecot's unprivileged
        # processes must reach it, and its UNIX sockets' paths must fit in 108 bytes.
        self._root = Path(tempfile.mkdtemp(prefix="bench-dovecot-"))
        self.dovecot = _dovecot_class()(self._root, self._tokens)
        self.site = InvoiceSite()
        try:
            self.dovecot.start()
        except BaseException as exc:  # pytest.fail raises a BaseException outside pytest too
            self.close()
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise RuntimeError(f"dovecot did not start: {exc}") from None

    def __enter__(self) -> BenchServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.dovecot.stop()
        self.site.close()
        self._tokens.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    def mailbox(self, count: int, mix: Mix, prefix: str = "bench") -> Mailbox:
        """A new user whose INBOX holds ``count`` messages of ``mix``, indexed by Dovecot."""
        user = self.dovecot.new_user(prefix)
        box = Mailbox(self, user.name, user.password)
        self.grow(box, count, mix)
        return box

    def grow(self, box: Mailbox, count: int, mix: Mix) -> None:
        """Add messages of ``mix`` up to ``count`` in all; each one's bytes depend only on the
        seed, its index, ``mix`` and ``count``."""
        owner = self.dovecot.mail_dir.stat()
        for sub in ("", "cur", "new", "tmp"):
            path = box.maildir / sub
            if not path.exists():
                path.mkdir()
                os.chown(path, owner.st_uid, owner.st_gid)
                path.chmod(0o700)
        cur = box.maildir / "cur"
        for index in range(box.count, count):
            kind, data = message(self.seed, index, mix, count, self.site.url)
            vsize = len(data) + data.count(b"\n")  # Dovecot serves CRLF line ends
            name = f"{_EPOCH + index}.M{index}P0.bench,S={len(data)},W={vsize}:2,"
            path = cur / name
            with open(path, "wb") as file:
                file.write(data)
            os.chown(path, owner.st_uid, owner.st_gid)
            box.bytes += vsize
            box.kinds[kind] = box.kinds.get(kind, 0) + 1
        box.count = count
        self.warm(box)

    def warm(self, box: Mailbox) -> None:
        """Index the INBOX and cache what clients ask for, as a server in use would have.

        Raw imaplib (no response parsing in Python: seconds for 50k messages). Checks that
        Dovecot sees every message written.
        """
        dovecot = self.dovecot
        client = imaplib.IMAP4(dovecot.host, dovecot.plain_port, timeout=600)
        try:
            client.login(box.user, box.password)
            _, data = client.select("INBOX", readonly=True)
            exists = int(data[0] or 0)
            if exists != box.count:
                raise RuntimeError(f"dovecot sees {exists} of {box.count} messages")
            items = "(RFC822.SIZE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
            for start in range(1, exists + 1, 5000):
                client.fetch(f"{start}:{min(start + 4999, exists)}", items)
        finally:
            client.logout()
