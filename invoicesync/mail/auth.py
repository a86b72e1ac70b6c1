"""XOAUTH2 access tokens: refreshed ahead of expiry, once at a time, rotation saved.

- The access token is refreshed from the refresh token ``REFRESH_AHEAD`` seconds
  before it expires, under a per-account lock, so parallel connections never
  refresh twice.
- A refresh token rotated by the provider is saved at once (a file per account,
  mode 0600, in ``[storage] tokens_dir``) and preferred over the configured one
  on the next run: losing it would lock the account out.
- Permanent answers (``invalid_grant``, ``invalid_client``, ``unauthorized_client``,
  ``interaction_required`` …) raise ``AuthError``: the account needs a person to
  reconnect it. Transient ones (network, timeout, 429, 5xx, unparsable JSON, an
  answer without ``access_token``) are retried with backoff and never mark the account.

HTTP goes through a ``post`` callable (``fetch.http.post_form``) handed in by the
pipeline, so this stage does not import another stage.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pydantic import SecretStr

from invoicesync.config import OAuth2Settings
from invoicesync.errors import ServerError
from invoicesync.logs import register_secret
from invoicesync.mail.errors import classify_oauth_error
from invoicesync.resilience.retry import RetryPolicy
from invoicesync.resilience.retry_after import retry_after_from_headers
from invoicesync.resilience.timeouts import Deadline

__all__ = ["REFRESH_AHEAD", "FormPoster", "TokenProvider", "TokenStore"]

REFRESH_AHEAD = 300.0  # seconds before expiry


class _Answer(Protocol):
    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> dict[str, str]: ...
    @property
    def body(self) -> bytes: ...


FormPoster = Callable[..., _Answer]


class TokenStore:
    """Rotated refresh tokens, one file per account, readable by this user only."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, account: str) -> Path:
        return self.directory / f"{account}.refresh_token"

    def load(self, account: str) -> SecretStr | None:
        try:
            text = self._path(account).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        register_secret(text)
        return SecretStr(text) if text else None

    def save(self, account: str, token: SecretStr) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self._path(account)
        temporary = target.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(token.get_secret_value())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)


class TokenProvider:
    """``provider(force)`` returns a valid access token; ``force`` refreshes regardless."""

    def __init__(
        self,
        account: str,
        settings: OAuth2Settings,
        *,
        post: FormPoster,
        store: TokenStore,
        retry: RetryPolicy,
        timeout: float,
        deadline: Deadline,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert settings.refresh_token is not None  # load_settings guarantees it
        self.account = account
        self.settings = settings
        self._post = post
        self._store = store
        self._retry = retry
        self._timeout = timeout
        self._deadline = deadline
        self._clock = clock
        self._lock = threading.Lock()
        self._refresh_token = store.load(account) or settings.refresh_token
        self._access: SecretStr | None = None
        self._expires_at = 0.0
        self.refreshes = 0

    def __call__(self, force: bool = False) -> str:
        with self._lock:
            if force or self._access is None or self._clock() >= self._expires_at - REFRESH_AHEAD:
                self._retry.call(self._refresh, deadline=self._deadline)
            assert self._access is not None
            return self._access.get_secret_value()

    def _refresh(self) -> None:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": self._refresh_token.get_secret_value(),
            "client_id": self.settings.client_id,
        }
        if self.settings.client_secret is not None:
            form["client_secret"] = self.settings.client_secret.get_secret_value()
        if self.settings.scope:
            form["scope"] = self.settings.scope
        timeout = max(0.001, self._deadline.timeout(self._timeout))
        answer = self._post(self.settings.token_url, form, timeout=timeout)
        self.refreshes += 1
        body = _json(answer.body)
        if answer.status != 200:
            error = str(body.get("error") or "") if body else None
            raise classify_oauth_error(
                answer.status,
                error,
                str(body.get("error_description") or "") if body else None,
                retry_after=retry_after_from_headers(answer.headers),
            )
        if body is None or not isinstance(body.get("access_token"), str):
            raise ServerError("oauth token endpoint answered without an access_token", stage="auth")
        register_secret(body["access_token"])  # never in a log line, even from a library
        self._access = SecretStr(body["access_token"])
        expires_in = body.get("expires_in")
        try:
            lifetime = float(expires_in) if expires_in is not None else 3600.0
        except (TypeError, ValueError):
            lifetime = 3600.0
        self._expires_at = self._clock() + lifetime
        rotated = body.get("refresh_token")
        if isinstance(rotated, str) and rotated != self._refresh_token.get_secret_value():
            register_secret(rotated)
            self._refresh_token = SecretStr(rotated)
            self._store.save(self.account, self._refresh_token)


def _json(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
