"""XOAUTH2 end to end: Dovecot checks tokens with the loopback provider, which also refreshes."""

from __future__ import annotations

import time
from pathlib import Path

from invoicesync import load_settings, run
from invoicesync.store import queries as repo
from invoicesync.store.db import Database
from tests.conftest import EXAMPLES
from tests.dovecot import Dovecot, ImapUser, TokenServer

SAMPLE = sorted((EXAMPLES / "mailbox" / "cur").iterdir())


def _config(
    tmp_path: Path, dovecot: Dovecot, server: TokenServer, accounts: list[tuple[str, str]]
) -> Path:
    """One XOAUTH2 account per (user, refresh token)."""
    blocks = "".join(
        f"""
[[accounts]]
name = "{user}"
imap_host = "{dovecot.host}"
imap_port = {dovecot.tls_port}
security = "ssl"
ca_file = "{dovecot.ca_file}"
username = "{user}"
oauth2 = {{ token_url = "{server.token_url}", client_id = "invoicesync", refresh_token = "{rt}" }}
"""
        for user, rt in accounts
    )
    config = tmp_path / "c.toml"
    config.write_text(
        f"""
[database]
url = "sqlite:///{tmp_path / "db.sqlite"}"
[storage]
dir = "{tmp_path / "docs"}"
tokens_dir = "{tmp_path / "tokens"}"
[retries]
time_scale = 0
[timeouts]
oauth_token = 1
{blocks}""",
        encoding="utf-8",
    )
    return config


def _mailbox(dovecot: Dovecot, user: ImapUser, count: int = 6) -> None:
    for path in SAMPLE[:count]:
        dovecot.append(user.name, "INBOX", path.read_bytes())


def test_xoauth2_refresh_rotation_and_transient_failures(
    dovecot: Dovecot, clean_token_server: TokenServer, tmp_path: Path
) -> None:
    """503 and garbage answers are retried; a rotated refresh token is saved and used next run."""
    server = clean_token_server
    user = dovecot.new_user("oauth")
    _mailbox(dovecot, user)
    pair = server.issue(user.name)
    server.rotate_refresh_token = True
    server.fail_next("503")
    server.fail_next("garbage")
    config = _config(tmp_path, dovecot, server, [(user.name, pair.refresh_token)])
    first = run(load_settings(config))
    assert first.exit_code == 0 and first.accounts[0].invoices > 0
    saved = (tmp_path / "tokens" / f"{user.name}.refresh_token").read_text(encoding="utf-8")
    assert saved != pair.refresh_token and saved in server.refresh_tokens
    assert (
        oct((tmp_path / "tokens" / f"{user.name}.refresh_token").stat().st_mode & 0o777) == "0o600"
    )
    # The configured token was revoked by the rotation: only the saved one works now.
    requests_before = server.token_requests
    second = run(load_settings(config))
    assert second.exit_code == 0 and second.accounts[0].status == "ok"
    assert server.token_requests == requests_before + 1
    assert all(
        pair.refresh_token != f.get("refresh_token") or i < requests_before
        for i, f in enumerate(server.token_request_log)
    )


def test_revoked_grant_needs_reconnect_while_others_complete(
    dovecot: Dovecot, clean_token_server: TokenServer, tmp_path: Path
) -> None:
    """invalid_grant marks that account needs_reconnect (exit 3); the other account completes."""
    server = clean_token_server
    good, revoked = dovecot.new_user("good"), dovecot.new_user("revoked")
    _mailbox(dovecot, good)
    _mailbox(dovecot, revoked)
    good_pair, revoked_pair = server.issue(good.name), server.issue(revoked.name)
    server.revoke_refresh_token(revoked_pair.refresh_token)
    config = _config(
        tmp_path,
        dovecot,
        server,
        [(revoked.name, revoked_pair.refresh_token), (good.name, good_pair.refresh_token)],
    )
    started = time.monotonic()
    result = run(load_settings(config))
    assert time.monotonic() - started < 15
    statuses = {a.account: a.status for a in result.accounts}
    assert statuses == {revoked.name: "needs_reconnect", good.name: "ok"}
    assert result.exit_code == 3
    assert "invalid_grant" in (result.accounts[0].error or "")
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with database.session() as session:
        flagged = repo.accounts_needing_reconnect(session)
    database.dispose()
    assert [name for name, _ in flagged] == [revoked.name]
    # No retries of a permanent refusal: one request for the revoked account's token.
    revoked_requests = [
        f for f in server.token_request_log if f.get("refresh_token") == revoked_pair.refresh_token
    ]
    assert len(revoked_requests) == 1


def test_expired_access_token_is_refreshed_once_on_login_failure(
    dovecot: Dovecot, clean_token_server: TokenServer, tmp_path: Path
) -> None:
    """A token the server rejects at login is refreshed once and the login retried."""
    server = clean_token_server
    user = dovecot.new_user("expiring")
    _mailbox(dovecot, user, 2)
    pair = server.issue(user.name)
    server.expires_in = 3600
    config = _config(tmp_path, dovecot, server, [(user.name, pair.refresh_token)])
    # The provider issues tokens that introspection already calls expired: the first login fails.
    original = server._token_response

    calls = {"n": 0}

    def expiring_first(form: dict[str, str]) -> tuple[int, dict[str, object]]:
        status, body = original(form)
        calls["n"] += 1
        if calls["n"] == 1 and status == 200:
            server.expire(str(body["access_token"]))
        return status, body

    server._token_response = expiring_first  # type: ignore[method-assign]
    try:
        result = run(load_settings(config))
    finally:
        server._token_response = original  # type: ignore[method-assign]
    assert result.exit_code == 0 and result.accounts[0].status == "ok"
    assert calls["n"] == 2


def test_slow_token_endpoint_times_out_and_is_retried(
    dovecot: Dovecot, clean_token_server: TokenServer, tmp_path: Path
) -> None:
    """A token endpoint slower than timeouts.oauth_token costs one timeout, then the retry works."""
    server = clean_token_server
    user = dovecot.new_user("slowtoken")
    _mailbox(dovecot, user, 2)
    pair = server.issue(user.name)
    server.slow_seconds = 3.0
    server.fail_next("slow")
    config = _config(tmp_path, dovecot, server, [(user.name, pair.refresh_token)])
    started = time.monotonic()
    result = run(load_settings(config))
    elapsed = time.monotonic() - started
    assert result.exit_code == 0 and result.accounts[0].status == "ok"
    assert 1.0 <= elapsed < 3.0  # one 1 s timeout paid; the 3 s answer was not waited for
