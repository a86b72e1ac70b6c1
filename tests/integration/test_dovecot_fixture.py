"""The real-server fixtures of tests/dovecot.py behave as the IMAP ingestion tests will rely on."""

from __future__ import annotations

import datetime as dt
import imaplib
import ssl
import time
from collections.abc import Iterator

import pytest
import requests
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from tests.dovecot import Dovecot, ImapUser, SilentImap, TokenServer, close_quietly

INVOICE = (
    b"From: billing@example.com\r\n"
    b"To: ap@example.com\r\n"
    b"Subject: Invoice 2024-001\r\n"
    b"Message-ID: <inv-2024-001@example.com>\r\n"
    b"Date: Tue, 02 Jan 2024 03:04:05 +0000\r\n"
    b"\r\n"
    b"Please find the invoice attached.\r\n"
)
RECEIVED = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@pytest.fixture
def client(dovecot: Dovecot, imap_user: ImapUser) -> Iterator[IMAPClient]:
    """A plain connection logged in as ``imap_user``."""
    connection = dovecot.connect(imap_user.name)
    yield connection
    close_quietly(connection)


def message(number: int) -> bytes:
    return INVOICE.replace(b"2024-001", b"2024-%03d" % number)


# -- connecting and logging in -------------------------------------------------------------------


def test_password_login_on_the_plain_port(dovecot: Dovecot, imap_user: ImapUser) -> None:
    """A client that never starts TLS logs in with its password; STARTTLS is on offer."""
    client = IMAPClient(dovecot.host, dovecot.plain_port, ssl=False, timeout=5)
    try:
        assert b"STARTTLS" in client.capabilities()
        client.login(imap_user.name, imap_user.password)
        assert not isinstance(client.socket(), ssl.SSLSocket)
        client.noop()
    finally:
        close_quietly(client)


def test_password_login_after_starttls(dovecot: Dovecot, imap_user: ImapUser) -> None:
    """STARTTLS on the plain port verifies against ca_file, then the login works."""
    client = IMAPClient(dovecot.host, dovecot.starttls_port, ssl=False, timeout=5)
    try:
        client.starttls(ssl.create_default_context(cafile=dovecot.ca_file))
        client.login(imap_user.name, imap_user.password)
        assert isinstance(client.socket(), ssl.SSLSocket)
    finally:
        close_quietly(client)


def test_password_login_over_implicit_tls(dovecot: Dovecot, imap_user: ImapUser) -> None:
    """The IMAPS port speaks TLS from the first byte with a certificate for 127.0.0.1."""
    context = ssl.create_default_context(cafile=dovecot.ca_file)
    client = IMAPClient(dovecot.host, dovecot.tls_port, ssl=True, ssl_context=context, timeout=5)
    try:
        client.login(imap_user.name, imap_user.password)
        assert client.socket().version() in ("TLSv1.2", "TLSv1.3")
    finally:
        close_quietly(client)


def test_certificate_is_not_trusted_without_the_test_ca(dovecot: Dovecot) -> None:
    """Verification is real: the system trust store doesn't know the fixture's CA."""
    with pytest.raises(ssl.SSLCertVerificationError):
        IMAPClient(dovecot.host, dovecot.tls_port, ssl=True, timeout=5)


def test_wrong_password_is_refused_at_once(dovecot: Dovecot, imap_user: ImapUser) -> None:
    """A wrong password fails fast and repeatedly, without slowing down the next login."""
    started = time.monotonic()
    for _ in range(3):
        with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
            dovecot.connect(imap_user.name, "wrong password")
    with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
        dovecot.connect("nobody-by-that-name", "whatever")
    close_quietly(dovecot.connect(imap_user.name))
    assert time.monotonic() - started < 2


def test_changed_password_takes_effect(dovecot: Dovecot, imap_user: ImapUser) -> None:
    """add_user on an existing user changes its password for the next login."""
    dovecot.add_user(imap_user.name, "the new password")
    with pytest.raises(LoginError):
        dovecot.connect(imap_user.name, imap_user.password)
    close_quietly(dovecot.connect(imap_user.name, "the new password"))


# -- mailbox helpers ------------------------------------------------------------------------------


def test_append_search_fetch_round_trip(
    dovecot: Dovecot, imap_user: ImapUser, client: IMAPClient
) -> None:
    """A message appended by the helper is found and fetched byte for byte, with its date."""
    uid = dovecot.append(imap_user.name, "INBOX", INVOICE, internal_date=RECEIVED)
    client.select_folder("INBOX", readonly=True)
    assert client.search(["HEADER", "Message-ID", "<inv-2024-001@example.com>"]) == [uid]
    data = client.fetch([uid], ["BODY.PEEK[]", "INTERNALDATE"])[uid]
    assert data[b"BODY[]"] == INVOICE
    assert data[b"INTERNALDATE"].astimezone(dt.UTC) == RECEIVED


def test_append_creates_the_folder(dovecot: Dovecot, imap_user: ImapUser) -> None:
    """Appending to a missing folder creates it; folders() lists it beside INBOX."""
    assert dovecot.append(imap_user.name, "Invoices", INVOICE) == 1
    assert dovecot.folders(imap_user.name) == ["INBOX", "Invoices"]
    assert dovecot.messages(imap_user.name, "Invoices") == {1: INVOICE}


def test_flags_set_and_read_back(dovecot: Dovecot, imap_user: ImapUser, client: IMAPClient) -> None:
    """Flags given to append and flags a client stores both show in flags()."""
    seen = dovecot.append(imap_user.name, "INBOX", message(1), flags=["\\Seen"])
    other = dovecot.append(imap_user.name, "INBOX", message(2))
    client.select_folder("INBOX")
    client.add_flags([other], ["$Processed", "\\Flagged"])
    assert dovecot.flags(imap_user.name, "INBOX") == {
        seen: ("\\Seen",),
        other: ("$Processed", "\\Flagged"),
    }


@pytest.mark.parametrize("folder", ["INBOX", "Invoices"])
def test_uidvalidity_reset_keeps_the_messages(
    dovecot: Dovecot, imap_user: ImapUser, folder: str
) -> None:
    """reset_uidvalidity gives a new UIDVALIDITY and new UIDs, same bodies, flags and dates."""
    dovecot.append(imap_user.name, folder, message(1), flags=["\\Seen"], internal_date=RECEIVED)
    dovecot.append(imap_user.name, folder, message(2), flags=["$Processed"])
    before = dovecot.uidvalidity(imap_user.name, folder)
    old_uids = set(dovecot.messages(imap_user.name, folder))

    after = dovecot.reset_uidvalidity(imap_user.name, folder)

    assert after != before
    assert dovecot.uidvalidity(imap_user.name, folder) == after
    bodies = dovecot.messages(imap_user.name, folder)
    assert sorted(bodies.values()) == [message(1), message(2)]
    flags = dovecot.flags(imap_user.name, folder)
    assert {bodies[uid]: flags[uid] for uid in bodies} == {
        message(1): ("\\Seen",),
        message(2): ("$Processed",),
    }
    if folder == "INBOX":  # INBOX keeps counting; a re-created folder starts again at 1
        assert not old_uids & set(bodies)


# -- sessions -------------------------------------------------------------------------------------


def test_connection_count_follows_logins_and_logouts(dovecot: Dovecot, imap_user: ImapUser) -> None:
    """connection_count sees each logged-in session of a user, and its end."""
    first = dovecot.connect(imap_user.name)
    second = dovecot.connect(imap_user.name, security="tls")
    try:
        assert dovecot.connection_count(imap_user.name) == 2
        close_quietly(first)
        dovecot.wait_for_connections(1, imap_user.name)
    finally:
        close_quietly(first)
        close_quietly(second)


def test_kick_drops_the_connection(dovecot: Dovecot, imap_user: ImapUser) -> None:
    """After kill_connections the client's next command fails, and a new login works."""
    client = dovecot.connect(imap_user.name)
    try:
        client.select_folder("INBOX")
        assert dovecot.kill_connections(imap_user.name) == 1
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            client.noop()
    finally:
        close_quietly(client)
    close_quietly(dovecot.connect(imap_user.name))


# -- OAuth2 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_bearer_token_login(
    dovecot: Dovecot, imap_user: ImapUser, clean_token_server: TokenServer, mechanism: str
) -> None:
    """A valid access token logs in; Dovecot asked the introspection endpoint once."""
    tokens = clean_token_server.issue(imap_user.name)
    client = dovecot.connect(security="tls")
    try:
        if mechanism == "XOAUTH2":
            client.oauth2_login(imap_user.name, tokens.access_token)
        else:
            client.oauthbearer_login(imap_user.name, tokens.access_token)
        client.select_folder("INBOX")
    finally:
        close_quietly(client)
    assert clean_token_server.introspection_requests == 1


@pytest.mark.parametrize("token", ["unknown", "expired", "another user's"])
def test_bad_bearer_token_is_refused(
    dovecot: Dovecot, imap_user: ImapUser, clean_token_server: TokenServer, token: str
) -> None:
    """An unknown, expired or someone else's token is an authentication failure, not temporary."""
    access_token = clean_token_server.issue(imap_user.name).access_token
    if token == "unknown":
        access_token = "at-never-issued"
    elif token == "expired":
        clean_token_server.expire(access_token)
    else:
        access_token = clean_token_server.issue("someone-else").access_token
    client = dovecot.connect()
    try:
        with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
            client.oauth2_login(imap_user.name, access_token)
    finally:
        close_quietly(client)


def test_introspection_outage_is_a_temporary_failure(
    dovecot: Dovecot, imap_user: ImapUser, clean_token_server: TokenServer
) -> None:
    """A 503 from the introspection endpoint makes Dovecot answer [UNAVAILABLE]."""
    access_token = clean_token_server.issue(imap_user.name).access_token
    clean_token_server.fail_next("503", endpoint="introspect")
    client = dovecot.connect()
    try:
        with pytest.raises(LoginError, match="UNAVAILABLE"):
            client.oauth2_login(imap_user.name, access_token)
    finally:
        close_quietly(client)


def test_token_is_not_a_password(
    dovecot: Dovecot, imap_user: ImapUser, clean_token_server: TokenServer
) -> None:
    """PLAIN never consults the introspection endpoint, even when given a valid token."""
    access_token = clean_token_server.issue(imap_user.name).access_token
    with pytest.raises(LoginError):
        dovecot.connect(imap_user.name, access_token)
    assert clean_token_server.introspection_requests == 0


# -- the token endpoint ---------------------------------------------------------------------------


def refresh(server: TokenServer, refresh_token: str, timeout: float = 5) -> requests.Response:
    return requests.post(
        server.token_url,
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "c"},
        timeout=timeout,
    )


def test_refresh_grant_gives_a_working_access_token(
    dovecot: Dovecot, imap_user: ImapUser, clean_token_server: TokenServer
) -> None:
    """The refresh grant answers a new access token that Dovecot accepts, and no refresh token."""
    tokens = clean_token_server.issue(imap_user.name)
    response = refresh(clean_token_server, tokens.refresh_token)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert "refresh_token" not in body
    assert clean_token_server.token_request_log[-1]["client_id"] == "c"
    client = dovecot.connect()
    try:
        client.oauth2_login(imap_user.name, body["access_token"])
    finally:
        close_quietly(client)


def test_refresh_token_rotation(clean_token_server: TokenServer) -> None:
    """With rotate_refresh_token the grant returns a new refresh token and retires the old one."""
    clean_token_server.rotate_refresh_token = True
    old = clean_token_server.issue("alice").refresh_token
    new = refresh(clean_token_server, old).json()["refresh_token"]
    assert new != old and clean_token_server.refresh_tokens == {new: "alice"}
    assert refresh(clean_token_server, old).json()["error"] == "invalid_grant"
    assert refresh(clean_token_server, new).status_code == 200


def test_unknown_refresh_token_is_invalid_grant(clean_token_server: TokenServer) -> None:
    """A refresh token the provider never issued (or revoked) gets 400 invalid_grant."""
    response = refresh(clean_token_server, "rt-never-issued")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("kind", "status", "content_type"),
    [
        ("invalid_grant", 400, "application/json"),
        ("503", 503, "application/json"),
        ("garbage", 200, "text/html"),
        ("no_access_token", 200, "application/json"),
    ],
)
def test_injected_token_endpoint_failure(
    clean_token_server: TokenServer, kind: str, status: int, content_type: str
) -> None:
    """fail_next makes exactly the next token request fail that way; the one after works."""
    clean_token_server.retry_after = 7
    refresh_token = clean_token_server.issue("alice").refresh_token
    clean_token_server.fail_next(kind)  # type: ignore[arg-type]
    failed = refresh(clean_token_server, refresh_token)
    assert (failed.status_code, failed.headers["Content-Type"]) == (status, content_type)
    if kind == "garbage":
        with pytest.raises(requests.JSONDecodeError):
            failed.json()
    else:
        assert "access_token" not in failed.json()
    if kind == "503":
        assert failed.headers["Retry-After"] == "7"
    assert refresh(clean_token_server, refresh_token).status_code == 200
    assert clean_token_server.token_requests == 2


def test_slow_token_endpoint_outlasts_a_client_timeout(clean_token_server: TokenServer) -> None:
    """A ``slow`` failure stalls past a 0.3 s client timeout, which then fires on time."""
    clean_token_server.slow_seconds = 5
    refresh_token = clean_token_server.issue("alice").refresh_token
    clean_token_server.fail_next("slow")
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        refresh(clean_token_server, refresh_token, timeout=0.3)
    assert time.monotonic() - started < 2


# -- silent servers -------------------------------------------------------------------------------


def test_server_without_greeting_times_out(silent_imap: SilentImap) -> None:
    """Connecting with a 0.5 s timeout to a server that never greets raises in about 0.5 s."""
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        IMAPClient(*silent_imap.no_greeting, ssl=False, timeout=0.5)
    assert 0.4 < time.monotonic() - started < 2


def test_server_that_only_greets_times_out_the_connect(silent_imap: SilentImap) -> None:
    """Greeting, then silence: IMAPClient's CAPABILITY with a 0.5 s timeout raises in ~0.5 s."""
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        IMAPClient(*silent_imap.greeting_only, ssl=False, timeout=0.5)
    assert 0.4 < time.monotonic() - started < 2
    assert b"CAPABILITY" in b"".join(silent_imap.received)


def test_server_that_stalls_at_login_times_out_the_login(silent_imap: SilentImap) -> None:
    """CAPABILITY is answered, LOGIN is not: the login with a 0.5 s timeout raises in ~0.5 s."""
    client = IMAPClient(*silent_imap.stalls_at_login, ssl=False, timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            client.login("alice", "secret")
        assert 0.4 < time.monotonic() - started < 2
    finally:
        client.shutdown()
    assert b"LOGIN alice" in b"".join(silent_imap.received)


def test_server_that_stalls_after_login_times_out_a_search(silent_imap: SilentImap) -> None:
    """Login and SELECT are answered; the SEARCH then times out in about 0.5 s."""
    client = IMAPClient(*silent_imap.stalls_after_login, ssl=False, timeout=0.5)
    try:
        client.login("alice", "secret")
        assert client.select_folder("INBOX")[b"EXISTS"] == 1
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            client.search("ALL")
        assert 0.4 < time.monotonic() - started < 2
    finally:
        client.shutdown()
