"""Building an account's mail source from its settings: local files or an IMAP pool."""

from __future__ import annotations

import threading
from typing import Any

from invoicesync.config import AccountSettings, Settings
from invoicesync.mail.auth import TokenProvider, TokenStore
from invoicesync.mail.imap_client import Credentials, ImapConnection, ImapEndpoint
from invoicesync.mail.imap_pool import ImapPool
from invoicesync.mail.imap_source import ImapSource
from invoicesync.mail.local import open_local_source
from invoicesync.mail.source import MailSource
from invoicesync.resilience.retry import RetryPolicy
from invoicesync.resilience.timeouts import Deadline

__all__ = ["open_source"]


def open_source(
    account: AccountSettings, settings: Settings, *, cancel: threading.Event, deadline: Deadline
) -> MailSource:
    """The account's source; IMAP connections open lazily, on first use."""
    if account.maildir is not None:
        return open_local_source(account.name, account.maildir)
    assert account.imap_host is not None and account.username is not None
    endpoint = ImapEndpoint(
        host=account.imap_host,
        port=account.port,
        security=account.security,
        tls_verify=account.tls_verify,
        ca_file=account.ca_file,
    )
    if account.oauth2 is not None:
        tokens = TokenProvider(
            account.name,
            account.oauth2,
            post=_post_form,
            store=TokenStore(settings.storage.tokens_dir),
            retry=RetryPolicy(settings.retries, stage="oauth", cancel=cancel),
            timeout=settings.timeouts.oauth_token,
            deadline=deadline,
        )
        credentials = Credentials(username=account.username, token=tokens)
    else:
        credentials = Credentials(username=account.username, password=account.password)
    pool = ImapPool(
        lambda: ImapConnection.open(endpoint, credentials, settings.timeouts, deadline),
        max_connections=settings.imap_pool.max_connections,
        idle_timeout=settings.imap_pool.idle_timeout,
        cancel=cancel,
        time_scale=settings.retries.time_scale,
    )
    return ImapSource(
        account,
        pool,
        settings.timeouts,
        max_document_bytes=int(settings.storage.max_document_mb * 1024 * 1024),
    )


def _post_form(*args: Any, **kwargs: Any) -> Any:
    from invoicesync.fetch.http import post_form  # requests only for accounts that use OAuth

    return post_form(*args, **kwargs)
