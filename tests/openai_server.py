"""A loopback OpenAI-compatible server for the extractor tests.

Implements ``POST /v1/chat/completions`` as the SDK's ``chat.completions.parse``
uses it: the answer is a ``chat.completion`` whose ``message.content`` is the JSON
object (or a ``refusal``), with ``usage`` filled. Each request takes the next
reply from the script queued with ``OpenAIServer.script``, else ``default``.
A reply is a ``Reply`` or a function of the request body returning one.

The server records every request body (``requests``) and the largest number of
requests in flight at once (``max_in_flight``).
"""

from __future__ import annotations

import copy
import http.server
import json
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

__all__ = [
    "VALID_INVOICE",
    "OpenAIServer",
    "Reply",
    "chat_reply",
    "error_reply",
    "invoice_reply",
    "openai_server",
]

#: A complete answer matching ``LlmInvoice`` (every field present, as strict mode demands).
VALID_INVOICE: dict[str, Any] = {
    "document_type": "invoice",
    "invoice_number": "RE-2026-0042",
    "issue_date": "2026-10-01",
    "due_date": "2026-10-31",
    "currency": "EUR",
    "seller": {
        "name": "Muster GmbH",
        "vat_id": "DE123456789",
        "street": "Hauptstraße 1",
        "postal_code": "10115",
        "city": "Berlin",
        "country": "DE",
    },
    "buyer": {
        "name": "Kunde AG",
        "vat_id": None,
        "street": None,
        "postal_code": None,
        "city": "München",
        "country": "DE",
    },
    "iban": "DE89 3704 0044 0532 0130 00",
    "bic": "COBADEFFXXX",
    "purchase_order": None,
    "payment_terms": "30 days net",
    "net_total": "100.00",
    "tax_total": "19.00",
    "gross_total": "€ 119.00",
    "amount_due": "119.00",
    "tax_breakdown": [{"rate": "19", "taxable_amount": "100.00", "tax_amount": "19.00"}],
    "line_items": [
        {
            "description": "Consulting",
            "quantity": "2",
            "unit": "h",
            "unit_price": "50.00",
            "net_amount": "100.00",
            "tax_rate": "19",
        }
    ],
}


@dataclass
class Reply:
    """One scripted answer: status, JSON body, headers, and seconds to wait first."""

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Responder = Callable[[dict[str, Any]], Reply]


def chat_reply(content: str | None, *, refusal: str | None = None, delay: float = 0.0) -> Reply:
    """A ``chat.completion`` with this content (or refusal) and some usage."""
    message = {"role": "assistant", "content": content, "refusal": refusal}
    return Reply(
        body={
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 1_790_000_000,
            "model": "gpt-test",
            "choices": [
                {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        },
        delay=delay,
    )


def invoice_reply(delay: float = 0.0, **changes: Any) -> Reply:
    """A valid answer: ``VALID_INVOICE`` with top-level ``changes``."""
    return chat_reply(json.dumps({**copy.deepcopy(VALID_INVOICE), **changes}), delay=delay)


def error_reply(
    status: int,
    message: str = "error",
    *,
    code: str | None = None,
    type: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """An API error in OpenAI's ``{"error": {...}}`` shape."""
    error = {"message": message, "type": type, "code": code, "param": None}
    return Reply(status=status, body={"error": error}, headers=headers or {})


class OpenAIServer:
    """The running server; ``url`` is the ``base_url`` to give the SDK."""

    def __init__(self) -> None:
        self.default: Responder | Reply = invoice_reply()
        self.requests: list[dict[str, Any]] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._script: deque[Responder | Reply] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def script(self, *replies: Responder | Reply) -> None:
        """Answer the next requests with these, in order; then ``default``."""
        with self._lock:
            self._script.extend(replies)

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.requests)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()  # wakes handlers still sleeping on a slow reply
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def _next(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(body)
            chosen = self._script.popleft() if self._script else self.default
        return chosen if isinstance(chosen, Reply) else chosen(body)

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # An answer must not wait for the client's delayed ACK (~40 ms per request).
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(error_reply(404, f"no route {self.path}"))
                    return
                with server._lock:
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                try:
                    reply = server._next(json.loads(raw))
                    if reply.delay:
                        server._stop.wait(reply.delay)
                    self._send(reply)
                finally:
                    with server._lock:
                        server._in_flight -= 1

            def _send(self, reply: Reply) -> None:
                payload = json.dumps(reply.body or {}).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (timeout test)
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    """A fresh loopback OpenAI server per test."""
    server = OpenAIServer()
    server.start()
    try:
        yield server
    finally:
        server.close()
