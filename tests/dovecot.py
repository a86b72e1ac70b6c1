"""Real IMAP servers for integration tests: Dovecot 2.3, a loopback OAuth2 provider, silent servers.

Load as a pytest plugin: ``pytest_plugins = ["tests.dovecot"]`` in tests/conftest.py, or
``python -m pytest -p tests.dovecot`` (``-p`` imports the module before pytest puts the rootdir on
``sys.path``, so the bare ``pytest`` script can't find it; ``python -m`` adds the cwd).

Fixtures:

- ``dovecot`` (session): a real ``/usr/sbin/dovecot -F`` on free loopback ports, yielding a
  :class:`Dovecot` with ``host``, ``plain_port``, ``starttls_port``, ``tls_port``, ``ca_file``,
  ``log_path`` and helpers to add users, append messages, read flags, reset UIDVALIDITY and kick
  sessions. Users log in with a password (PLAIN/LOGIN) or an OAuth2 bearer token (XOAUTH2,
  OAUTHBEARER) that Dovecot checks against ``token_server``.
- ``imap_user`` (function): a fresh user with an empty INBOX on that server.
- ``token_server`` (session): a :class:`TokenServer`, the OAuth2 provider — token endpoint for
  the refresh grant and RFC 7662 introspection for Dovecot — with failure injection and counters.
- ``clean_token_server`` (function): the same server, reset before and after the test.
- ``silent_imap`` (function): a :class:`SilentImap`, loopback listeners that never greet, greet
  and never answer, stall at LOGIN, or stall after LOGIN/SELECT: for timeout tests.

Needs Dovecot: ``apt-get install -y dovecot-imapd`` (Debian/Ubuntu). CI's ``.ci/run`` runs that
when ``/usr/sbin/dovecot`` is missing; the ``dovecot`` fixture fails (not skips) without it, so
a missing server can't silently turn the IMAP tests green. Only the package's binaries are used:
the fixture writes its own configuration into a temporary directory and never touches
``/etc/dovecot``, ``/run/dovecot`` or ``/var/lib/dovecot``, and it runs as root (CI, containers)
as well as an ordinary user.

Set ``DOVECOT_TEST_DEBUG=1`` to get Dovecot's auth and mail debug logging in ``log_path``. A
failed test that used ``dovecot`` gets the tail of that log as a report section.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import grp
import json
import os
import pwd
import re
import secrets
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple, get_args
from urllib.parse import parse_qs, urlsplit

import pytest
import trustme
from imapclient import IMAPClient

DOVECOT = Path("/usr/sbin/dovecot")
DOVEADM = Path("/usr/bin/doveadm")
INSTALL_HINT = "install it with: apt-get install -y dovecot-imapd"
HOST = "127.0.0.1"
START_TIMEOUT = 15.0
MAX_USERIP_CONNECTIONS = 10
STOP_TIMEOUT = 10.0

Security = Literal["plain", "starttls", "tls"]
FailureKind = Literal["invalid_grant", "503", "slow", "garbage", "no_access_token"]
Endpoint = Literal["token", "introspect"]
_NAME = re.compile(r"[a-z0-9][a-z0-9._@-]*")


class ImapUser(NamedTuple):
    """A Dovecot user and its password."""

    name: str
    password: str


class TokenPair(NamedTuple):
    """What an OAuth2 provider hands out: a short-lived access token and a refresh token."""

    access_token: str
    refresh_token: str


# --------------------------------------------------------------------------------------------
# The OAuth2 provider
# --------------------------------------------------------------------------------------------


class TokenServer:
    """A loopback OAuth2 provider: ``POST /token`` (refresh grant) and ``POST /introspect``.

    State is plain attributes the tests set directly; every access goes through ``lock`` on the
    server side, so set them between requests, not during one.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._wake = threading.Event()
        self._httpd = _TokenHTTPServer((HOST, 0), _TokenHandler, self)
        self.host = HOST
        self.port: int = self._httpd.server_address[1]
        self.url = f"http://{HOST}:{self.port}"
        self.token_url = f"{self.url}/token"
        self.introspection_url = f"{self.url}/introspect"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="token-server", daemon=True
        )
        self.reset()

    def reset(self) -> None:
        """Forget every token, pending failure, counter and setting."""
        with self.lock:
            # Wake handlers stalled in a ``slow`` failure: they hang up without answering, so a
            # late answer can't count towards the next test.
            self._wake.set()
            self._wake = threading.Event()
            #: valid access tokens -> user; introspection says ``active: true`` for these
            self.access_tokens: dict[str, str] = {}
            #: access tokens that were valid once -> user; introspection says ``active: false``
            self.expired_tokens: dict[str, str] = {}
            #: valid refresh tokens -> user
            self.refresh_tokens: dict[str, str] = {}
            #: the refresh grant returns a new refresh token and revokes the old one
            self.rotate_refresh_token = False
            #: how long a ``slow`` failure stalls before answering normally
            self.slow_seconds = 3.0
            #: ``expires_in`` of issued access tokens
            self.expires_in = 3600
            #: ``Retry-After`` header of ``503`` answers (None: no header)
            self.retry_after: int | None = None
            self.token_requests = 0
            self.introspection_requests = 0
            #: the form fields of every token endpoint request, in order
            self.token_request_log: list[dict[str, str]] = []
            self._failures: dict[Endpoint, deque[FailureKind]] = {
                "token": deque(),
                "introspect": deque(),
            }

    def issue(self, user: str) -> TokenPair:
        """A new valid access token and refresh token for ``user``."""
        pair = TokenPair(_token("at"), _token("rt"))
        with self.lock:
            self.access_tokens[pair.access_token] = user
            self.refresh_tokens[pair.refresh_token] = user
        return pair

    def expire(self, access_token: str) -> None:
        """Make ``access_token`` expired: introspection reports it inactive from now on."""
        with self.lock:
            self.expired_tokens[access_token] = self.access_tokens.pop(access_token)

    def revoke_refresh_token(self, refresh_token: str) -> None:
        """Revoke ``refresh_token``: the refresh grant answers ``invalid_grant`` for it."""
        with self.lock:
            del self.refresh_tokens[refresh_token]

    def fail_next(self, kind: FailureKind, times: int = 1, *, endpoint: Endpoint = "token") -> None:
        """Make the next ``times`` requests to ``endpoint`` fail like ``kind``.

        ``invalid_grant``: 400 with a JSON OAuth2 error; ``503``: 503 with a JSON error (and
        ``Retry-After`` if ``retry_after`` is set); ``slow``: wait ``slow_seconds``, then answer
        normally; ``garbage``: 200 with an HTML body; ``no_access_token``: 200 JSON without
        ``access_token`` (introspection: without ``active`` and ``username``).
        """
        if kind not in get_args(FailureKind):
            raise ValueError(f"unknown failure kind {kind!r}")
        with self.lock:
            self._failures[endpoint].extend([kind] * times)

    # -- server side --------------------------------------------------------------------------

    def _next_failure(self, endpoint: Endpoint) -> FailureKind | None:
        with self.lock:
            queue = self._failures[endpoint]
            return queue.popleft() if queue else None

    def _token_response(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.token_requests += 1
            self.token_request_log.append(form)
            if form.get("grant_type") != "refresh_token":
                return 400, {"error": "unsupported_grant_type"}
            user = self.refresh_tokens.get(form.get("refresh_token", ""))
            if user is None:
                return 400, {
                    "error": "invalid_grant",
                    "error_description": "Token has been expired or revoked.",
                }
            access_token = _token("at")
            self.access_tokens[access_token] = user
            body: dict[str, Any] = {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": self.expires_in,
                "scope": "imap",
            }
            if self.rotate_refresh_token:
                del self.refresh_tokens[form["refresh_token"]]
                body["refresh_token"] = _token("rt")
                self.refresh_tokens[body["refresh_token"]] = user
            return 200, body

    def _introspection_response(self, token: str) -> dict[str, Any]:
        with self.lock:
            self.introspection_requests += 1
            if token in self.access_tokens:
                user = self.access_tokens[token]
                return {"active": True, "username": user, "scope": "imap", "token_type": "Bearer"}
            # Dovecot 2.3 refuses an inactive token as a plain authentication failure. Later
            # versions check the username first and call an answer without one a temporary
            # failure (clients would retry), so name a user anyway, "" if the token is unknown.
            return {"active": False, "username": self.expired_tokens.get(token, "")}

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self.lock:
            self._wake.set()  # handlers stalled in a ``slow`` failure hang up
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _TokenHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, owner: TokenServer) -> None:
        self.owner = owner
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up on a ``slow`` answer leaves a broken pipe behind: expected.
        pass


class _TokenHandler(BaseHTTPRequestHandler):
    server: _TokenHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest's captured stderr for the code under test

    def do_GET(self) -> None:
        # ``introspection_mode = get`` appends the token to the URL: /introspect?token=<token>
        url = urlsplit(self.path)
        if url.path != "/introspect":
            self._send(404, {"error": "not_found"})
            return
        token = parse_qs(url.query).get("token", [""])[0]
        self._introspect(token)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8", "replace")
        form = {key: values[0] for key, values in parse_qs(raw).items()}
        path = urlsplit(self.path).path
        if path == "/token":
            if self._fail("token"):
                return
            status, body = self.server.owner._token_response(form)
            self._send(status, body)
        elif path == "/introspect":
            self._introspect(form.get("token", ""))
        else:
            self._send(404, {"error": "not_found"})

    def _introspect(self, token: str) -> None:
        if self._fail("introspect"):
            return
        self._send(200, self.server.owner._introspection_response(token))

    def _fail(self, endpoint: Endpoint) -> bool:
        """Play the next injected failure; True when the answer has been sent."""
        owner = self.server.owner
        kind = owner._next_failure(endpoint)
        if kind is None:
            return False
        if kind == "slow":
            with owner.lock:
                wake, seconds = owner._wake, owner.slow_seconds
            # then answer normally, late; or hang up if reset() or stop() came first
            return wake.wait(seconds)
        with owner.lock:
            if endpoint == "token":
                owner.token_requests += 1
            else:
                owner.introspection_requests += 1
        if kind == "invalid_grant":
            self._send(400, {"error": "invalid_grant", "error_description": "Bad Request"})
        elif kind == "503":
            headers = {} if owner.retry_after is None else {"Retry-After": str(owner.retry_after)}
            self._send(503, {"error": "temporarily_unavailable"}, headers)
        elif kind == "garbage":
            self._send_raw(200, b"<html><body>Service Unavailable</body></html>", "text/html")
        else:  # no_access_token
            self._send(200, {"token_type": "Bearer", "expires_in": owner.expires_in})
        return True

    def _send(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        self._send_raw(status, json.dumps(body).encode(), "application/json", headers)

    def _send_raw(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _token(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(18)}"


# --------------------------------------------------------------------------------------------
# Dovecot
# --------------------------------------------------------------------------------------------


class Dovecot:
    """A running Dovecot: where it listens, and helpers that act on its mailboxes.

    ``plain_port`` and ``starttls_port`` are the same listener: Dovecot offers STARTTLS on every
    non-TLS port when ``ssl = yes``, so "plain" means a client that doesn't issue STARTTLS (and
    may log in anyway: ``disable_plaintext_auth = no``). ``tls_port`` is implicit TLS (IMAPS).

    The helpers log in over IMAP as the user (password from :meth:`add_user`) or use ``doveadm``,
    so they see exactly what a client sees; each opens and closes its own connection.

    The server lives for the whole session: isolate tests by user (``imap_user``,
    :meth:`new_user`), not by server. One user may hold ``max_connections_per_user`` sessions
    from 127.0.0.1; one more fails to log in with ``[LIMIT]``.
    """

    def __init__(self, root: Path, token_server: TokenServer, *, debug: bool = False) -> None:
        self.root = root
        self.token_server = token_server
        self.host = HOST
        self.plain_port, self.tls_port = _free_ports(2)
        self.starttls_port = self.plain_port
        self.config_path = root / "dovecot.conf"
        self.oauth2_config_path = root / "dovecot-oauth2.conf.ext"
        self.users_dir = root / "users"
        self.mail_dir = root / "mail"
        self.log_path = root / "dovecot.log"
        self.stderr_path = root / "dovecot.stderr"
        self.ca_file = root / "ca.pem"
        self.passwords: dict[str, str] = {}
        self.max_connections_per_user = MAX_USERIP_CONNECTIONS
        self._process: subprocess.Popen[bytes] | None = None
        self._debug = debug

    # -- connecting ---------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the test CA (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def connect(
        self,
        user: str | None = None,
        password: str | None = None,
        *,
        security: Security = "plain",
        timeout: float = 5.0,
    ) -> IMAPClient:
        """An IMAPClient connected with ``security``, logged in as ``user`` if given."""
        if security == "tls":
            client = IMAPClient(
                self.host, self.tls_port, ssl=True, ssl_context=self.ssl_context(), timeout=timeout
            )
        else:
            client = IMAPClient(self.host, self.plain_port, ssl=False, timeout=timeout)
        try:
            if security == "starttls":
                client.starttls(self.ssl_context())
            if user is not None:
                client.login(user, self.passwords[user] if password is None else password)
        except BaseException:
            close_quietly(client)
            raise
        return client

    @contextlib.contextmanager
    def session(self, user: str) -> Iterator[IMAPClient]:
        """A logged-in plain connection for ``user``, logged out afterwards."""
        client = self.connect(user)
        try:
            yield client
        finally:
            close_quietly(client)

    # -- users --------------------------------------------------------------------------------

    def add_user(self, name: str, password: str) -> None:
        """Add ``name`` (or change its password); effective for the next login.

        One passwd-file per user (``users/%u``): Dovecot stats a passwd-file at most once per
        second and re-reads it when its mtime or size changed, so a new line in a shared file
        could stay unseen for up to a second; a new user's own file is read at its first login.
        Changing a password still meets that once-a-second check, so it waits for the next
        second to start (up to 1 s).
        """
        if not _NAME.fullmatch(name):
            # Dovecot lowercases login names (auth_username_format = %Lu) before the lookup.
            raise ValueError(f"user names here are lowercase [a-z0-9._@-]: {name!r}")
        if any(char in password for char in ":\n\r"):
            raise ValueError("a passwd-file password can't contain ':' or line breaks")
        changed = name in self.passwords
        self.passwords[name] = password
        path = self.users_dir / name
        tmp = self.users_dir / f".{name}.tmp"  # user names don't start with "."
        # Empty uid/gid/home: the global mail_uid/mail_gid apply, mail_location names the Maildir.
        tmp.write_text(f"{name}:{{PLAIN}}{password}::::::\n", encoding="utf-8")
        tmp.chmod(0o644)  # read by the auth process, which runs as the unprivileged user
        if changed:
            # Same size within the same second would look unchanged: move the mtime on.
            stamp = int(max(path.stat().st_mtime + 1, time.time()))
            os.utime(tmp, (stamp, stamp))
        tmp.replace(path)
        if changed:
            time.sleep(1.0 - time.time() % 1.0 + 0.01)

    def new_user(self, prefix: str = "user") -> ImapUser:
        """A new user with a unique name and a random password."""
        user = ImapUser(f"{prefix}-{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(12))
        self.add_user(*user)
        return user

    # -- mailboxes ----------------------------------------------------------------------------

    def append(
        self,
        user: str,
        folder: str,
        raw_bytes: bytes,
        flags: Sequence[str | bytes] = (),
        internal_date: dt.datetime | None = None,
    ) -> int:
        """Append a message to ``folder`` (created if missing) and return its UID.

        A naive ``internal_date`` is taken as local time (imapclient's rule).
        """
        with self.session(user) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            response = client.append(folder, raw_bytes, flags=flags, msg_time=internal_date)
        return _appenduid(response)

    def folders(self, user: str) -> list[str]:
        """The names of ``user``'s folders, sorted."""
        with self.session(user) as client:
            return sorted(name for _, _, name in client.list_folders())

    def uidvalidity(self, user: str, folder: str) -> int:
        """UIDVALIDITY of ``folder``."""
        with self.session(user) as client:
            return int(client.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"])

    def flags(self, user: str, folder: str) -> dict[int, tuple[str, ...]]:
        r"""UID -> the message's flags as sorted text, e.g. ``{1: ("$Invoice", "\Seen")}``.

        Without ``\Recent``: that belongs to the session that first saw a message, not to it.
        """
        with self.session(user) as client:
            client.select_folder(folder, readonly=True)
            uids = client.search("ALL")
            fetched = client.fetch(uids, ["FLAGS"]) if uids else {}
        return {
            uid: tuple(sorted(_text(flag) for flag in data[b"FLAGS"] if flag != b"\\Recent"))
            for uid, data in fetched.items()
        }

    def messages(self, user: str, folder: str) -> dict[int, bytes]:
        """UID -> raw message of every message in ``folder``."""
        with self.session(user) as client:
            client.select_folder(folder, readonly=True)
            uids = client.search("ALL")
            fetched = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
        return {uid: data[b"BODY[]"] for uid, data in fetched.items()}

    def reset_uidvalidity(self, user: str, folder: str) -> int:
        """Give ``folder`` a new UIDVALIDITY, keeping its messages (bodies, flags, dates).

        Like a server whose index was rebuilt: the messages come back under new UIDs and a new
        UIDVALIDITY, so a client must forget every UID it remembered. Other folders: DELETE and
        CREATE (Dovecot hands a re-created mailbox a fresh UIDVALIDITY). INBOX can't be deleted,
        so it is emptied and ``doveadm mailbox update --uid-validity`` sets a new one. Returns
        the new UIDVALIDITY.
        """
        old = self.uidvalidity(user, folder)
        with self.session(user) as client:
            client.select_folder(folder)
            uids = client.search("ALL")
            saved = client.fetch(uids, ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"]) if uids else {}
            if folder.upper() == "INBOX":
                if uids:
                    client.delete_messages(uids)
                    client.expunge()
                client.unselect_folder()
            else:
                client.unselect_folder()
                client.delete_folder(folder)
                client.create_folder(folder)
        if folder.upper() == "INBOX":
            self.doveadm("mailbox", "update", "-u", user, "--uid-validity", str(old + 1), folder)
        with self.session(user) as client:
            for uid in sorted(saved):
                data = saved[uid]
                flags = [flag for flag in data[b"FLAGS"] if flag != b"\\Recent"]
                client.append(folder, data[b"BODY[]"], flags=flags, msg_time=data[b"INTERNALDATE"])
        new = self.uidvalidity(user, folder)
        if new == old:
            raise AssertionError(f"UIDVALIDITY of {user}/{folder} stayed {old}")
        return new

    # -- sessions -----------------------------------------------------------------------------

    def doveadm(self, *args: str) -> str:
        """Run ``doveadm -c <our config> *args`` and return its stdout (raises on failure)."""
        result = subprocess.run(
            [str(DOVEADM), "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"doveadm {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result.stdout

    def connection_count(self, user: str | None = None) -> int:
        """Logged-in IMAP sessions (of ``user``, or all); connections still in login don't count.

        From ``doveadm who``, i.e. anvil's view: a session that just logged out can linger for a
        few milliseconds — see :meth:`wait_for_connections`.
        """
        args = ["who", "-1"] + ([user] if user else [])
        lines = self.doveadm(*args).splitlines()[1:]  # the first line is the header
        return sum(1 for line in lines if line.strip())

    def wait_for_connections(
        self, expected: int, user: str | None = None, timeout: float = 5.0
    ) -> None:
        """Wait until :meth:`connection_count` is ``expected``."""
        deadline = time.monotonic() + timeout
        while (count := self.connection_count(user)) != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} IMAP sessions for {user or 'all'}, not {expected}")
            time.sleep(0.02)

    def kill_connections(self, user: str) -> int:
        """Drop every IMAP session of ``user`` (``doveadm kick``); return how many there were.

        Waits until they are gone, so the next command on a kicked client fails for sure.
        """
        count = self.connection_count(user)
        if count:
            self.doveadm("kick", user)
            self.wait_for_connections(0, user)
        return count

    # -- diagnostics --------------------------------------------------------------------------

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of Dovecot's log (and its stderr)."""
        text = ""
        for path in (self.stderr_path, self.log_path):
            if path.exists():
                text += path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        uid, gid, user_name, group_name = _service_identity()
        self.root.chmod(0o755)  # the unprivileged Dovecot processes must reach their files
        self.mail_dir.mkdir()
        os.chown(self.mail_dir, uid, gid)
        self.mail_dir.chmod(0o700)
        (self.root / "state").mkdir()
        self.users_dir.mkdir()
        self._write_certificates()
        self.add_user("probe", secrets.token_urlsafe(12))  # logs in to prove auth is up
        self.oauth2_config_path.write_text(self._oauth2_config(), encoding="utf-8")
        self.config_path.write_text(self._config(uid, gid, user_name, group_name), encoding="utf-8")
        with self.stderr_path.open("wb") as stderr:
            self._process = subprocess.Popen(
                [str(DOVECOT), "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                # its own process group: a Ctrl-C in the terminal reaches pytest, which then stops
                # Dovecot in order, instead of both racing
                start_new_session=True,
            )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        for port in (self.plain_port, self.tls_port):
            while True:
                assert self._process is not None
                if self._process.poll() is not None:
                    pytest.fail(
                        f"dovecot exited with {self._process.returncode} at start "
                        f"(config and log kept in {self.root}):\n{self.log_tail()}",
                        pytrace=False,
                    )
                try:
                    with socket.create_connection((self.host, port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        pytest.fail(
                            f"dovecot didn't listen on {self.host}:{port} within "
                            f"{START_TIMEOUT:.0f} s (config and log kept in {self.root}):\n"
                            f"{self.log_tail()}",
                            pytrace=False,
                        )
                    time.sleep(0.05)
        # The ports accept as soon as the master binds them; a login proves auth is up too.
        try:
            with self.session("probe") as client:
                client.noop()
        except Exception as error:
            pytest.fail(
                f"dovecot listens but a login fails ({error!r}; config and log kept in "
                f"{self.root}):\n{self.log_tail()}",
                pytrace=False,
            )

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # the master stops every child, then exits
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT)

    # -- configuration ------------------------------------------------------------------------

    def _write_certificates(self) -> None:
        ca = trustme.CA(organization_name="invoicesync test CA")
        ca.cert_pem.write_to_path(str(self.ca_file))
        server = ca.issue_cert("127.0.0.1", "localhost")
        chain = self.root / "server.pem"
        chain.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
        key = self.root / "server.key"
        key.write_bytes(server.private_key_pem.bytes())
        key.chmod(0o600)  # read by the config process, which runs as the invoking user

    def _config(self, uid: int, gid: int, user: str, group: str) -> str:
        root = self.root
        debug = "yes" if self._debug else "no"
        return f"""\
# Written by tests/dovecot.py for one pytest session; see that module. Not a production config.

# Everything under one temporary directory: nothing touches /etc/dovecot, /run/dovecot or
# /var/lib/dovecot, and two sessions (two checkouts, xdist workers) can't collide. The path is
# short on purpose: base_dir holds UNIX sockets, and their paths must fit in 108 bytes.
base_dir = {root}/run
state_dir = {root}/state
instance_name = invoicesync-test-{os.getpid()}
protocols = imap
listen = {self.host}
# The master runs in the foreground (-F) as the fixture's child: no systemd, no daemon. When it
# gets SIGTERM at session end, it ends every IMAP session too (the default, relied upon here).
shutdown_clients = yes

log_path = {self.log_path}
# Failed logins say why in the log: the first thing to read when an IMAP test fails.
auth_verbose = yes
auth_debug = {debug}
mail_debug = {debug}

# Dovecot never gives mail access to UID 0 ("Mail access for users with UID 0 is not
# permitted"), so as root every service and mail process runs as {user}:{group}; as an ordinary
# user it all runs as that user (the master can't switch users then anyway). Restricting the
# valid UID/GID range to exactly that identity makes any other userdb answer a loud error.
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}
mail_location = maildir:{self.mail_dir}/%u

# TLS with a throwaway CA made at fixture start. ssl = yes (not "required") offers STARTTLS on
# the plain listener and still lets clients log in without it.
ssl = yes
ssl_cert = <{root}/server.pem
ssl_key = <{root}/server.key
ssl_min_protocol = TLSv1.2
# Dovecot counts loopback connections as secured anyway; stated so that plaintext logins stay
# allowed whatever the address.
disable_plaintext_auth = no
# Dovecot's default, stated because pool tests meet it: the 11th concurrent session of one user
# from one IP is refused ("Maximum number of connections from user+IP exceeded").
mail_max_userip_connections = {MAX_USERIP_CONNECTIONS}

# Passwords for PLAIN/LOGIN from the passwd-file; bearer tokens for XOAUTH2/OAUTHBEARER from the
# oauth2 passdb. "mechanisms" routes each login to one passdb, so a token is never tried as a
# password and a password never reaches the introspection endpoint.
auth_mechanisms = plain login xoauth2 oauthbearer
# Refused logins must be answered at once, and must not slow down the logins after them:
# - a failure waits in the auth process's failure queue (auth_failure_delay, 2 s by default);
# - anvil's per-IP auth penalty then holds back every later login from 127.0.0.1, good ones too,
#   by 2, 4, 8 ... 15 s. login_trusted_networks doesn't lift it in 2.3; "nodelay" does (failures
#   are answered directly and never reach the penalty counter).
# This first passdb authenticates nobody ("noauthenticate") and only adds nodelay to every login;
# the fields of a noauthenticate passdb survive the failures of the passdbs after it.
auth_failure_delay = 0
passdb {{
  driver = static
  args = noauthenticate nodelay=yes
}}
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN {self.users_dir}/%u
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {self.oauth2_config_path}
}}
userdb {{
  driver = passwd-file
  args = {self.users_dir}/%u
}}

# Login and anvil processes chroot by default, which only root may do: a test server needs no
# chroot, and without it the same config runs as root and as an ordinary user.
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = {self.host}
    port = {self.plain_port}
  }}
  inet_listener imaps {{
    address = {self.host}
    port = {self.tls_port}
    ssl = yes
  }}
}}
"""

    def _oauth2_config(self) -> str:
        return f"""\
# Bearer tokens are checked against the test token server's RFC 7662 introspection endpoint.
# No tokeninfo_url: Dovecot then goes straight to introspection. "post" sends token=<token> as
# a form, like real providers (Keycloak, WSO2) expect.
introspection_mode = post
introspection_url = {self.token_server.introspection_url}
username_attribute = username
active_attribute = active
active_value = true
# A stalled provider makes the login fail after 5 s instead of hanging it.
timeout_msecs = 5000
debug = {"yes" if self._debug else "no"}
"""


def _service_identity() -> tuple[int, int, str, str]:
    """UID, GID and names the Dovecot services and mail processes run as."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return entry.pw_uid, os.getegid(), entry.pw_name, grp.getgrgid(os.getegid()).gr_name
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.fail("running as root, the dovecot fixture needs the user 'nobody'", pytrace=False)
    return nobody.pw_uid, nobody.pw_gid, nobody.pw_name, grp.getgrgid(nobody.pw_gid).gr_name


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (free now; Dovecot binds them a moment later)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _appenduid(response: bytes) -> int:
    match = re.search(rb"\[APPENDUID \d+ (\d+)\]", response)
    if match is None:
        raise AssertionError(f"no APPENDUID in {response!r}")
    return int(match.group(1))


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def close_quietly(client: IMAPClient) -> None:
    """Log out, or at least close the socket, whatever state the connection is in."""
    try:
        client.logout()
    except Exception:
        with contextlib.suppress(Exception):
            client.shutdown()


# --------------------------------------------------------------------------------------------
# Silent servers
# --------------------------------------------------------------------------------------------


class SilentImap:
    """Loopback IMAP servers for timeout tests, each address a ``(host, port)``.

    - ``no_greeting`` accepts the connection and never sends a byte.
    - ``greeting_only`` sends ``* OK ready`` and never answers a command. imaplib (so
      IMAPClient) always asks for CAPABILITY right after the greeting, so it times out while
      connecting, never reaching LOGIN.
    - ``stalls_at_login`` answers CAPABILITY (and LOGOUT), never LOGIN: login timeouts.
    - ``stalls_after_login`` also answers LOGIN, SELECT/EXAMINE and NOOP, never anything else:
      SEARCH, FETCH, STORE ... timeouts.

    Everything clients send is collected in ``received``, one entry per ``recv``.
    """

    GREETING = b"* OK ready\r\n"
    # The commands each listener answers; any other command is never answered.
    _ANSWERS: ClassVar[dict[str, frozenset[bytes]]] = {
        "no_greeting": frozenset(),
        "greeting_only": frozenset(),
        "stalls_at_login": frozenset({b"CAPABILITY", b"LOGOUT"}),
        "stalls_after_login": frozenset(
            {b"CAPABILITY", b"LOGOUT", b"LOGIN", b"SELECT", b"EXAMINE", b"NOOP"}
        ),
    }
    _SELECTED = (
        b"* FLAGS (\\Seen \\Deleted)\r\n* 1 EXISTS\r\n* OK [UIDVALIDITY 1] ok\r\n"
        b"* OK [UIDNEXT 2] ok\r\n%s OK [READ-WRITE] selected\r\n"
    )

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._buffers: dict[socket.socket, bytes] = {}
        self.received: list[bytes] = []
        self.accepted = 0
        self.no_greeting = self._listen("no_greeting")
        self.greeting_only = self._listen("greeting_only")
        self.stalls_at_login = self._listen("stalls_at_login")
        self.stalls_after_login = self._listen("stalls_after_login")
        self._thread = threading.Thread(target=self._serve, name="silent-imap", daemon=True)
        self._thread.start()

    def _listen(self, mode: str) -> tuple[str, int]:
        listener = socket.socket()
        listener.bind((HOST, 0))
        listener.listen(16)
        listener.setblocking(False)
        self._sockets.append(listener)
        self._selector.register(listener, selectors.EVENT_READ, ("listener", mode))
        return HOST, listener.getsockname()[1]

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                role, mode = key.data
                if role == "listener":
                    self._accept(sock, mode)
                else:
                    self._read(sock, mode)

    def _accept(self, listener: socket.socket, mode: str) -> None:
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        self.accepted += 1
        self._sockets.append(connection)
        self._buffers[connection] = b""
        if mode != "no_greeting":
            connection.sendall(self.GREETING)
        connection.setblocking(False)
        self._selector.register(connection, selectors.EVENT_READ, ("connection", mode))

    def _read(self, connection: socket.socket, mode: str) -> None:
        try:
            data = connection.recv(65536)
        except OSError:
            data = b""
        if not data:  # the client hung up
            self._selector.unregister(connection)
            return
        self.received.append(data)
        lines = (self._buffers[connection] + data).split(b"\r\n")
        self._buffers[connection] = lines.pop()
        for line in lines:
            tag, _, rest = line.partition(b" ")
            command = rest.split(b" ", 1)[0].upper()
            if command in self._ANSWERS[mode]:
                with contextlib.suppress(OSError):
                    connection.sendall(self._answer(tag, command))

    def _answer(self, tag: bytes, command: bytes) -> bytes:
        if command == b"CAPABILITY":
            return b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n%s OK done\r\n" % tag
        if command in (b"LOGIN", b"NOOP"):
            return b"%s OK done\r\n" % tag
        if command in (b"SELECT", b"EXAMINE"):
            return self._SELECTED % tag
        return b"* BYE bye\r\n%s OK done\r\n" % tag  # LOGOUT

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._selector.close()
        for sock in self._sockets:
            sock.close()


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def token_server() -> Iterator[TokenServer]:
    """The loopback OAuth2 provider: refresh grant at /token, introspection at /introspect."""
    server = TokenServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clean_token_server(token_server: TokenServer) -> Iterator[TokenServer]:
    """The session's token server, with no tokens, failures or counts left by other tests."""
    token_server.reset()
    yield token_server
    token_server.reset()


@pytest.fixture(scope="session")
def dovecot(token_server: TokenServer) -> Iterator[Dovecot]:
    """A real Dovecot IMAP server for the whole session (plain/STARTTLS, IMAPS, XOAUTH2)."""
    for binary in (DOVECOT, DOVEADM):
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{binary} is missing: {INSTALL_HINT}", pytrace=False)
    version = subprocess.run(
        [str(DOVECOT), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not version.startswith("2.3."):
        # 2.4 renamed most settings (mail_location, ssl_cert, passdb blocks ...) and rejects
        # a 2.3 configuration; Debian 12 and Ubuntu 22.04/24.04 ship 2.3.
        pytest.fail(f"the dovecot fixture writes a Dovecot 2.3 config, found {version!r}")
    # Not pytest's tmp_path: that sits in a 0700 directory the unprivileged Dovecot processes
    # can't enter when we are root, and its long path would overflow UNIX socket names.
    root = Path(tempfile.mkdtemp(prefix="dovecot-"))
    server = Dovecot(root, token_server, debug=bool(os.environ.get("DOVECOT_TEST_DEBUG")))
    server.start()  # on failure the directory stays, for its config and log
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def imap_user(dovecot: Dovecot) -> ImapUser:
    """A fresh Dovecot user (unique name, random password) whose mailbox is empty."""
    return dovecot.new_user()


@pytest.fixture
def silent_imap() -> Iterator[SilentImap]:
    """Loopback IMAP servers that never greet, never answer, stall at or after login."""
    server = SilentImap()
    try:
        yield server
    finally:
        server.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add the tail of Dovecot's log to the report of a failed test that used the server."""
    report = yield
    server = getattr(item, "funcargs", {}).get("dovecot")
    if report.failed and isinstance(server, Dovecot):
        report.sections.append(("dovecot log (tail)", server.log_tail()))
    return report
