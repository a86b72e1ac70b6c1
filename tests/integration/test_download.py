"""Link downloads against real HTTP servers on loopback: PDFs, redirects, limits, refusals."""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme

from invoicesync.config import LinkSettings, RetrySettings, TimeoutSettings
from invoicesync.errors import OperationTimeout, ServerError
from invoicesync.fetch import http as fetch_http
from invoicesync.fetch.download import LinkResult, download_pdf, link_retry_policy
from invoicesync.fetch.guard import AddressRefusedError, IPAddress
from invoicesync.fetch.http import make_session
from invoicesync.resilience.timeouts import Deadline

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<<>>\n%%EOF\n"
HTML = b"<!DOCTYPE html><html><body><form>Please log in</form></body></html>"
TIMEOUTS = TimeoutSettings(http_connect=1, http_read=0.5, download=2)
RETRIES = RetrySettings(backoff_initial=0, jitter=0, time_scale=0)
LOOPBACK = ["127.0.0.1/32"]

Route = Callable[["Handler"], None]


# ------------------------------------------------------------------ servers


class Server(ThreadingHTTPServer):
    """A loopback HTTP server that counts connections and records request paths."""

    daemon_threads = True

    def __init__(self, host: str, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.connections = 0
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.stop = threading.Event()
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, 0), Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the FQDN, a DNS query for 127.0.0.2: skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "test", self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections += 1
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up mid-answer is what several tests are about: stay quiet."""

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        self.server.headers.append(dict(self.headers))
        route = self.server.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_error(404)
        else:
            route(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    """Start servers for one test: ``serve(routes, host="127.0.0.1", tls=None)``."""
    servers: list[Server] = []

    def start(
        routes: dict[str, Route], host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
    ) -> Server:
        server = Server(host, routes)
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop.set()
        server.shutdown()
        server.server_close()


def answer(body: bytes, content_type: str = "application/pdf", status: int = 200) -> Route:
    def route(handler: Handler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return route


def status(code: int, **headers: str) -> Route:
    def route(handler: Handler) -> None:
        handler.send_response(code)
        headers.setdefault("Content_Length", "0")
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.end_headers()

    return route


def redirect(location: str) -> Route:
    return status(302, Location=location)


def in_turn(*routes: Route) -> Route:
    """Each request gets the next route; the last one repeats."""
    calls = iter(routes)
    last = [routes[-1]]

    def route(handler: Handler) -> None:
        last[0] = next(calls, last[0])
        last[0](handler)

    return route


def drip(handler: Handler) -> None:
    """A PDF that arrives one byte every 50 ms: each read succeeds, the whole never ends."""
    handler.send_response(200)
    handler.send_header("Content-Length", "100000")
    handler.end_headers()
    for byte in PDF * 1000:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        if handler.server.stop.wait(0.05):
            return


def drip_status_line(handler: Handler) -> None:
    """Even the status line arrives one byte every 50 ms."""
    for byte in b"HTTP/1.0 200 OK\r\n" + b"X-Padding: " + b"a" * 1000:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        if handler.server.stop.wait(0.05):
            return


def silent_after_headers(handler: Handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.flush()
    handler.server.stop.wait(5)


def endless(handler: Handler) -> None:
    """A PDF without Content-Length that never ends."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/pdf")
    handler.end_headers()
    handler.wfile.write(PDF)
    chunk = b"0" * 65536
    while not handler.server.stop.is_set():
        handler.wfile.write(chunk)


# ------------------------------------------------------------------ helpers


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every address any socket of this process tries to connect to."""
    calls: list[object] = []
    original = socket.socket.connect

    def spy(self: socket.socket, address: Any) -> None:
        calls.append(address)
        original(self, address)

    monkeypatch.setattr(socket.socket, "connect", spy)
    return calls


def fetch(
    url: str,
    *,
    allow: list[str] | None = None,
    timeouts: TimeoutSettings = TIMEOUTS,
    verify: str | None = None,
    **links: Any,
) -> LinkResult:
    settings = LinkSettings(allow_hosts=LOOPBACK if allow is None else allow, **links)
    with make_session(settings, timeouts) as session:
        if verify is not None:
            session.verify = verify
        return download_pdf(
            url,
            session=session,
            settings=settings,
            timeouts=timeouts,
            retry=link_retry_policy(RETRIES, settings),
            deadline=Deadline(30),
        )


# ------------------------------------------------------------------ answers


def test_pdf_is_downloaded(serve: Callable[..., Server]) -> None:
    """A PDF answer is ok, its bytes returned, the URL's token redacted, the UA descriptive."""
    server = serve({"/invoice.pdf": answer(PDF)})
    result = fetch(f"http://127.0.0.1:{server.port}/invoice.pdf?token=s3cret")
    assert (result.outcome, result.data, result.host) == ("ok", PDF, "127.0.0.1")
    assert result.url == f"http://127.0.0.1:{server.port}/invoice.pdf?…"
    assert "s3cret" not in repr(result)
    assert "invoicesync" in server.headers[0]["User-Agent"]


def test_pdf_with_a_wrong_content_type_is_still_a_pdf(serve: Callable[..., Server]) -> None:
    """The bytes decide: a PDF served as text/html is ok."""
    server = serve({"/d": answer(PDF, "text/html; charset=utf-8")})
    assert fetch(f"http://127.0.0.1:{server.port}/d").data == PDF


def test_html_posing_as_pdf_is_not_a_pdf(serve: Callable[..., Server]) -> None:
    """A login page served as application/pdf is not_a_pdf, the host named in the reason."""
    server = serve({"/invoice.pdf": answer(HTML)})
    result = fetch(f"http://127.0.0.1:{server.port}/invoice.pdf")
    assert (result.outcome, result.data) == ("not_a_pdf", None)
    assert "127.0.0.1" in result.reason and "<!DOCTYP" in result.reason


def test_not_found_fails(serve: Callable[..., Server]) -> None:
    """A 404 is failed at once, without retries."""
    server = serve({})
    result = fetch(f"http://127.0.0.1:{server.port}/gone.pdf")
    assert result.outcome == "failed" and "HTTP 404" in result.reason
    assert len(server.paths) == 1


# ------------------------------------------------------------------ redirects


def test_two_redirects_are_followed(serve: Callable[..., Server]) -> None:
    """A chain of two redirects (relative and absolute Location) ends at the PDF."""
    server = serve({"/a": redirect("/b"), "/pdf": answer(PDF)})
    server.routes["/b"] = redirect(f"http://127.0.0.1:{server.port}/pdf")
    result = fetch(f"http://127.0.0.1:{server.port}/a")
    assert result.outcome == "ok" and server.paths == ["/a", "/b", "/pdf"]


def test_redirect_loop_fails(serve: Callable[..., Server]) -> None:
    """A redirect back to a URL already visited is failed as a loop, each hop requested once."""
    server = serve({"/x": redirect("/y"), "/y": redirect("/x")})
    result = fetch(f"http://127.0.0.1:{server.port}/x", max_redirects=10)
    assert result.outcome == "failed" and "redirect loop" in result.reason
    assert server.paths == ["/x", "/y"]


def test_too_many_redirects_fail(serve: Callable[..., Server]) -> None:
    """More hops than max_redirects is failed."""
    server = serve({"/a": redirect("/b"), "/b": redirect("/pdf"), "/pdf": answer(PDF)})
    result = fetch(f"http://127.0.0.1:{server.port}/a", max_redirects=1)
    assert result.outcome == "failed" and "more than 1 redirects" in result.reason


def test_redirect_to_a_refused_host_never_reaches_it(serve: Callable[..., Server]) -> None:
    """An allowed host redirecting to a refused one: one request there, no connection here."""
    target = serve({"/pdf": answer(PDF)}, host="127.0.0.2")
    server = serve({"/go": redirect(f"http://127.0.0.2:{target.port}/pdf")})
    result = fetch(f"http://127.0.0.1:{server.port}/go")
    assert result.outcome == "refused" and "127.0.0.2 is loopback" in result.reason
    assert server.paths == ["/go"] and target.connections == 0


def test_session_guards_redirects_requests_follows(serve: Callable[..., Server]) -> None:
    """Even when requests follows redirects itself, every hop's connection is vetted."""
    target = serve({"/pdf": answer(PDF)}, host="127.0.0.2")
    server = serve({"/go": redirect(f"http://127.0.0.2:{target.port}/pdf")})
    with (
        make_session(LinkSettings(allow_hosts=LOOPBACK), TIMEOUTS) as session,
        pytest.raises(AddressRefusedError),
    ):
        session.get(f"http://127.0.0.1:{server.port}/go")
    assert target.connections == 0


# ------------------------------------------------------------------ time and size


def test_slow_drip_is_cut_at_the_download_limit(serve: Callable[..., Server]) -> None:
    """A body that trickles in forever raises OperationTimeout at ~download seconds."""
    server = serve({"/pdf": drip})
    started = time.monotonic()
    with pytest.raises(OperationTimeout, match="time limit"):
        fetch(f"http://127.0.0.1:{server.port}/pdf")
    assert 1.5 < time.monotonic() - started < 3.5


def test_dripping_status_line_is_cut_too(serve: Callable[..., Server]) -> None:
    """A status line and headers that trickle in are bound by the same total limit."""
    server = serve({"/pdf": drip_status_line})
    started = time.monotonic()
    with pytest.raises(OperationTimeout):
        fetch(f"http://127.0.0.1:{server.port}/pdf")
    assert time.monotonic() - started < 3.5


def test_silent_server_is_retried_then_raised(serve: Callable[..., Server]) -> None:
    """A server gone silent times out per read, is tried 1 + retries times, then raised."""
    server = serve({"/pdf": silent_after_headers})
    started = time.monotonic()
    with pytest.raises(OperationTimeout):
        fetch(f"http://127.0.0.1:{server.port}/pdf", retries=2)
    assert len(server.paths) == 3
    assert time.monotonic() - started < 3.5


def test_endless_body_is_too_large(serve: Callable[..., Server]) -> None:
    """A body without end is abandoned just past max_mb, quickly."""
    server = serve({"/pdf": endless})
    started = time.monotonic()
    result = fetch(f"http://127.0.0.1:{server.port}/pdf", max_mb=1)
    assert result.outcome == "too_large" and "1 MB" in result.reason
    assert time.monotonic() - started < 2


def test_announced_oversize_is_too_large_unread(serve: Callable[..., Server]) -> None:
    """A Content-Length over the cap is too_large before a byte of the body is read."""
    server = serve({"/pdf": status(200, Content_Length="999999999")})
    result = fetch(f"http://127.0.0.1:{server.port}/pdf", max_mb=1)
    assert result.outcome == "too_large" and "999999999 bytes" in result.reason


# ------------------------------------------------------------------ retries


def test_rate_limit_waits_retry_after_then_succeeds(
    serve: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    """A 429 with Retry-After: 1 is retried after exactly 1 s (logged), then the PDF is ok."""
    server = serve({"/pdf": in_turn(status(429, Retry_After="1"), answer(PDF))})
    retries = RetrySettings(backoff_initial=0.25, jitter=0, time_scale=0)
    settings = LinkSettings(allow_hosts=LOOPBACK)
    with (
        caplog.at_level(logging.WARNING, logger="invoicesync.resilience.retry"),
        make_session(settings, TIMEOUTS) as session,
    ):
        result = download_pdf(
            f"http://127.0.0.1:{server.port}/pdf",
            session=session,
            settings=settings,
            timeouts=TIMEOUTS,
            retry=link_retry_policy(retries, settings),
            deadline=Deadline(30),
        )
    assert result.outcome == "ok" and len(server.paths) == 2
    assert "next_in=1.0s" in caplog.text and "rate_limited" in caplog.text


def test_server_error_is_raised_after_all_attempts(serve: Callable[..., Server]) -> None:
    """500 every time: 1 + retries requests, then the ServerError itself is raised."""
    server = serve({"/pdf": status(500)})
    with pytest.raises(ServerError, match="HTTP 500"):
        fetch(f"http://127.0.0.1:{server.port}/pdf", retries=3)
    assert len(server.paths) == 4


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:{port}/pdf", "refused: 127.0.0.1 is loopback"),
        ("http://[::ffff:127.0.0.1]:{port}/pdf", "IPv4-mapped form of 127.0.0.1"),
        ("http://2130706433:{port}/pdf", "non-canonical IPv4 address (127.0.0.1)"),
        ("http://0x7f000001:{port}/pdf", "non-canonical IPv4 address (127.0.0.1)"),
        ("http://127.1:{port}/pdf", "non-canonical IPv4 address (127.0.0.1)"),
        ("http://0177.0.0.1:{port}/pdf", "non-canonical IPv4 address (127.0.0.1)"),
        ("http://localhost:{port}/pdf", "localhost is under the special-use domain localhost"),
        ("http://[::1]:{port6}/pdf", "refused: ::1 is loopback"),
        ("http://10.0.0.1/invoice.pdf", "refused: 10.0.0.1 is private"),
        ("http://169.254.169.254/latest/meta-data", "cloud metadata address"),
        ("http://[fd00:ec2::254]/latest/meta-data", "cloud metadata address"),
    ],
)
def test_refused_without_connecting(
    serve: Callable[..., Server], connects: list[object], url: str, reason: str
) -> None:
    """Internal addresses, however spelt, are refused before any connection is attempted."""
    server = serve({"/pdf": answer(PDF)})
    server6 = serve({"/pdf": answer(PDF)}, host="::1")
    result = fetch(url.format(port=server.port, port6=server6.port), allow=[])
    assert result.outcome == "refused" and reason in result.reason
    assert result.data is None
    assert connects == [] and server.connections == server6.connections == 0


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "127.1", "0177.0.0.1"])
def test_obfuscated_literals_are_refused_even_when_allowed(
    serve: Callable[..., Server], connects: list[object], host: str
) -> None:
    """A non-canonical IPv4 spelling is refused although the address it means is allowed."""
    server = serve({"/pdf": answer(PDF)})
    result = fetch(f"http://{host}:{server.port}/pdf", allow=LOOPBACK)
    assert result.outcome == "refused" and "non-canonical" in result.reason
    assert connects == [] and server.connections == 0


def test_connected_peer_is_checked_again(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the resolution step let a bad address through, the peer check still refuses."""

    def careless(host: str, allow: Any) -> list[IPAddress]:
        import ipaddress

        return [ipaddress.ip_address("127.0.0.1")]

    monkeypatch.setattr(fetch_http, "check_host", careless)
    server = serve({"/pdf": answer(PDF)})
    result = fetch(f"http://127.0.0.1:{server.port}/pdf", allow=[])
    assert result.outcome == "refused" and "127.0.0.1 is loopback" in result.reason
    time.sleep(0.1)  # let the server thread notice the closed connection
    assert server.connections == 1 and server.paths == []


def test_non_http_link_fails(connects: list[object]) -> None:
    """Only http(s) is followed: a file: or ftp: link is failed without any I/O."""
    for url in ("file:///etc/passwd", "ftp://example.com/x.pdf", "http://[::1/broken"):
        assert fetch(url).outcome == "failed"
    assert connects == []


# ------------------------------------------------------------------ TLS


def test_https_checks_the_certificate_by_name(serve: Callable[..., Server], tmp_path: Path) -> None:
    """Connecting to the vetted IP keeps SNI and certificate checks on the link's host name."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    server = serve({"/pdf": answer(PDF)}, tls=context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    named = fetch(f"https://localhost:{server.port}/pdf", allow=["LOCALHOST"], verify=str(ca_file))
    assert named.outcome == "ok" and named.data == PDF
    by_ip = fetch(f"https://127.0.0.1:{server.port}/pdf", verify=str(ca_file))
    assert by_ip.outcome == "failed" and "certificate" in by_ip.reason
