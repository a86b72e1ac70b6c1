"""A loopback web server for invoice links, as a pytest fixture (``site``)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

#: What the site answers by default: an invoice PDF.
PDF = (
    Path(__file__).resolve().parents[1] / "examples" / "documents" / "XR_EN16931_Einfach.pdf"
).read_bytes()


class Site:
    """A loopback web server whose answers the test sets; it counts every request."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.answer: tuple[int, str, bytes] = (200, "application/pdf", PDF)
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.requests.append(self.path)
                status, content_type, body = site.answer
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def link_mails(root: Path, url: str, count: int = 1) -> Path:
    """``count`` mails in a new Maildir at ``root``, each linking ``url`` with its own token."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for number in range(count):
        message = EmailMessage()
        message["From"], message["To"] = "billing@vendor.example", "ap@buyer.example"
        message["Subject"] = f"Your invoice is ready ({number})"
        message["Message-ID"] = f"<link{number}@vendor.example>"
        message.set_content(f"Download your invoice here: {url}?token=s3cr3t-{number}\n")
        message.add_alternative(
            f'<p>Your invoice: <a href="{url}?token=s3cr3t-{number}">download</a></p>',
            subtype="html",
        )
        (root / "cur" / f"17000000{number:02d}.L{number}.test:2,S").write_bytes(message.as_bytes())
    return root


@pytest.fixture
def site() -> Iterator[Site]:
    server = Site()
    yield server
    server.server.shutdown()
    server.server.server_close()
