"""One IMAP connection over imapclient, every operation under its own socket timeout.

Each operation sets the socket timeout to ``min(its own timeout, time left)``
before it starts, so a server that accepts and then says nothing costs at most
that operation's timeout. Every imapclient/imaplib/socket/ssl error is
translated by ``mail.errors.translate_imap_errors``.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from imapclient import IMAPClient
from imapclient.imapclient import SocketTimeout
from pydantic import SecretStr

from invoicesync.config import TimeoutSettings
from invoicesync.errors import AuthError, ProtocolError
from invoicesync.mail.errors import translate_imap_errors
from invoicesync.resilience.timeouts import Deadline

__all__ = ["Credentials", "ImapConnection", "ImapEndpoint"]

T = TypeVar("T")
# imapclient logs every line sent at DEBUG — LOGIN arguments included. Never let it.
logging.getLogger("imapclient").setLevel(logging.WARNING)


@dataclass(frozen=True, slots=True)
class ImapEndpoint:
    host: str
    port: int
    security: str  # ssl | starttls | none
    tls_verify: bool = True
    ca_file: Path | None = None

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


@dataclass(frozen=True, slots=True)
class Credentials:
    """A password, or a callable giving an XOAUTH2 access token (``force=True``: refresh first)."""

    username: str
    password: SecretStr | None = None
    token: Callable[[bool], str] | None = None


class ImapConnection:
    """A logged-in IMAP session. ``deadline`` caps every operation's timeout."""

    def __init__(
        self, client: IMAPClient, endpoint: ImapEndpoint, timeouts: TimeoutSettings
    ) -> None:
        self.client = client
        self.endpoint = endpoint
        self.timeouts = timeouts
        self.deadline = Deadline.never()
        self.selected: str | None = None
        self.last_used = time.monotonic()

    @classmethod
    def open(
        cls,
        endpoint: ImapEndpoint,
        credentials: Credentials,
        timeouts: TimeoutSettings,
        deadline: Deadline,
    ) -> ImapConnection:
        """Connect (TLS or STARTTLS as configured) and log in."""
        host = str(endpoint)
        context = endpoint.ssl_context() if endpoint.security != "none" else None
        with translate_imap_errors("connect", host=host):
            client = IMAPClient(
                endpoint.host,
                port=endpoint.port,
                ssl=endpoint.security == "ssl",
                ssl_context=context,
                timeout=SocketTimeout(
                    connect=deadline.timeout(timeouts.imap_connect),
                    read=deadline.timeout(timeouts.imap_connect),
                ),
            )
        connection = cls(client, endpoint, timeouts)
        connection.deadline = deadline
        try:
            if endpoint.security == "starttls":
                connection._op("starttls", timeouts.imap_connect, lambda: client.starttls(context))
            connection._login(credentials)
        except BaseException:
            connection.close()
            raise
        return connection

    def _login(self, credentials: Credentials) -> None:
        login_timeout = self.timeouts.imap_login
        if credentials.token is None:
            assert credentials.password is not None
            password = credentials.password.get_secret_value()
            self._op(
                "login", login_timeout, lambda: self.client.login(credentials.username, password)
            )
            return
        token = credentials.token(False)
        try:
            self._op(
                "login",
                login_timeout,
                lambda: self.client.oauth2_login(credentials.username, token),
            )
        except AuthError:
            # The token may have been revoked or expired early: refresh once and try again.
            fresh = credentials.token(True)
            self._op(
                "login",
                login_timeout,
                lambda: self.client.oauth2_login(credentials.username, fresh),
            )

    def _op(self, name: str, own_timeout: float, call: Callable[[], T]) -> T:
        with translate_imap_errors(name, host=str(self.endpoint)):
            self.client.socket().settimeout(max(0.001, self.deadline.timeout(own_timeout)))
            result = call()
        self.last_used = time.monotonic()
        return result

    # ---------------------------------------------------------------- operations

    def noop(self) -> None:
        self._op("noop", self.timeouts.imap_search, self.client.noop)

    def select(self, folder: str) -> int:
        """Select ``folder`` read-write; returns its UIDVALIDITY."""
        info = self._op(
            "select", self.timeouts.imap_search, lambda: self.client.select_folder(folder)
        )
        self.selected = folder
        return int(info[b"UIDVALIDITY"])

    def search(self, criteria: Sequence[Any]) -> list[int]:
        return list(
            self._op("search", self.timeouts.imap_search, lambda: self.client.search(criteria))
        )

    def fetch(self, uids: Sequence[int], items: Sequence[str]) -> dict[int, dict[bytes, Any]]:
        return dict(
            self._op("fetch", self.timeouts.imap_fetch, lambda: self.client.fetch(uids, items))
        )

    def capable(self, capability: str) -> bool:
        return bool(
            self._op(
                "capability",
                self.timeouts.imap_mark,
                lambda: self.client.has_capability(capability),
            )
        )

    def add_flags(self, uids: Sequence[int], flags: Sequence[bytes]) -> None:
        self._op("store", self.timeouts.imap_mark, lambda: self.client.add_flags(uids, flags))

    def add_labels(self, uids: Sequence[int], labels: Sequence[str]) -> None:
        self._op(
            "store", self.timeouts.imap_mark, lambda: self.client.add_gmail_labels(uids, labels)
        )

    def move(self, uids: Sequence[int], folder: str) -> None:
        """MOVE, or COPY + UID EXPUNGE of exactly these UIDs; never a folder-wide EXPUNGE.

        The target folder is created when missing.
        """
        exists = self._op(
            "list", self.timeouts.imap_mark, lambda: self.client.folder_exists(folder)
        )
        if not exists:
            self._op("create", self.timeouts.imap_mark, lambda: self.client.create_folder(folder))
        if self.capable("MOVE"):
            self._op("move", self.timeouts.imap_mark, lambda: self.client.move(uids, folder))
            return
        if not self.capable("UIDPLUS"):
            # Without UID EXPUNGE only a folder-wide EXPUNGE could remove the originals.
            raise ProtocolError(
                f"{self.endpoint} has neither MOVE nor UIDPLUS: use after_ingest = flag or seen"
            )
        self._op("copy", self.timeouts.imap_mark, lambda: self.client.copy(uids, folder))
        self.add_flags(uids, [b"\\Deleted"])
        self._op("expunge", self.timeouts.imap_mark, lambda: self.client.uid_expunge(uids))

    def close(self) -> None:
        """Drop the connection at once (also from another thread: wakes a blocked read)."""
        with contextlib.suppress(Exception):  # already closed or half-dead: nothing to release
            self.client.shutdown()

    def logout(self) -> None:
        try:
            self._op("logout", self.timeouts.imap_mark, self.client.logout)
        except Exception:
            self.close()
