"""No secret anywhere: a full run at DEBUG with known secrets, every log line and table searched.

The run reads two Dovecot accounts (a password and an OAuth2 refresh token with a client
secret), follows a signed download link and asks the model with an API key, all on
loopback, with ``-vv --log-format json``. Then every secret — and the encodings in which a
library could print it — is looked for in stderr, stdout, the metrics file and every
column of every table.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from invoicesync.logs import CONTEXT_FIELDS
from tests.conftest import EXAMPLES
from tests.dovecot import Dovecot, TokenServer
from tests.openai_server import OpenAIServer

PDF = (EXAMPLES / "documents" / "saeco.pdf").read_bytes()
SAMPLE = sorted((EXAMPLES / "mailbox" / "cur").iterdir())
API_KEY = "sk-test-NEVER-LOGGED-5f1e9a0c2b7d4e6f"
CLIENT_SECRET = "client-secret-NEVER-LOGGED-73a9"
SIGNATURE = "sig0NEVERLOGGED9c1d2e3f"
LINK_TOKEN = "linktokenNEVERLOGGED4411"
JSON_RUN = ("--log-format", "json", "run")


@pytest.fixture
def site() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/pdf")
            self.send_header("Content-Length", str(len(PDF)))
            self.end_headers()
            self.wfile.write(PDF)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _link_mail(url: str) -> bytes:
    message = EmailMessage()
    message["From"], message["To"] = "billing@vendor.example", "ap@buyer.example"
    message["Subject"] = "Your invoice is ready"
    message["Message-ID"] = "<signed-link@vendor.example>"
    message.set_content(f"Download: {url}/inv.pdf?X-Amz-Signature={SIGNATURE}&t={LINK_TOKEN}\n")
    return message.as_bytes()


def _table_text(db: Path) -> str:
    """Every value of every row of every table, as text."""
    connection = sqlite3.connect(db)
    try:
        tables = [
            r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        return "\n".join(
            repr(row) for table in tables for row in connection.execute(f'SELECT * FROM "{table}"')
        )
    finally:
        connection.close()


def test_a_debug_run_never_shows_a_secret(
    dovecot: Dovecot,
    clean_token_server: TokenServer,
    openai_server: OpenAIServer,
    site: str,
    tmp_path: Path,
) -> None:
    password_user = dovecot.new_user("pw")
    oauth_user = dovecot.new_user("oauth")
    for path in SAMPLE[:4]:
        dovecot.append(password_user.name, "INBOX", path.read_bytes())
        dovecot.append(oauth_user.name, "INBOX", path.read_bytes())
    dovecot.append(password_user.name, "INBOX", _link_mail(site))
    pair = clean_token_server.issue(oauth_user.name)
    clean_token_server.rotate_refresh_token = True
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "imap_password").write_text(password_user.password, encoding="utf-8")
    textfile = tmp_path / "metrics.prom"
    config = tmp_path / "c.toml"
    config.write_text(
        f"""
secrets_dir = "{tmp_path / "secrets"}"
[database]
url = "sqlite:///{tmp_path / "db.sqlite"}"
[storage]
dir = "{tmp_path / "docs"}"
tokens_dir = "{tmp_path / "tokens"}"
[retries]
time_scale = 0
[links]
allow_hosts = ["127.0.0.1/32"]
[openai]
api_key_env = "SECRETS_TEST_OPENAI_KEY"
base_url = "{openai_server.url}"
[metrics]
textfile = "{textfile}"
[[accounts]]
name = "password"
imap_host = "{dovecot.host}"
imap_port = {dovecot.tls_port}
ca_file = "{dovecot.ca_file}"
username = "{password_user.name}"
password_file = "imap_password"
[[accounts]]
name = "oauth"
imap_host = "{dovecot.host}"
imap_port = {dovecot.tls_port}
ca_file = "{dovecot.ca_file}"
username = "{oauth_user.name}"
[accounts.oauth2]
token_url = "{clean_token_server.token_url}"
client_id = "invoicesync"
client_secret = "{CLIENT_SECRET}"
refresh_token = "{pair.refresh_token}"
""",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOICESYNC_")}
    env["SECRETS_TEST_OPENAI_KEY"] = API_KEY
    done = subprocess.run(
        [sys.executable, "-m", "invoicesync", "--config", str(config), "-vv", *JSON_RUN],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert openai_server.calls >= 1  # the model path ran, with the key
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(lines) > 50
    assert all(set(CONTEXT_FIELDS) <= set(line) for line in lines)
    assert {line["account"] for line in lines} >= {"password", "oauth"}
    # Libraries logged at DEBUG too: the model client's request options, the HTTP traffic.
    debug = {line["logger"] for line in lines if line["level"] == "debug"}
    assert "openai._base_client" in debug and "urllib3.connectionpool" in debug

    with clean_token_server.lock:
        issued = [*clean_token_server.access_tokens, *clean_token_server.expired_tokens]
        refresh = [*clean_token_server.refresh_tokens, pair.refresh_token]
    secrets = [password_user.password, API_KEY, CLIENT_SECRET, SIGNATURE, LINK_TOKEN]
    secrets += issued + refresh
    # XOAUTH2 and AUTH PLAIN send the secrets base64-encoded: those forms are secrets too.
    secrets += [
        base64.b64encode(f"user={oauth_user.name}\x01auth=Bearer {t}\x01\x01".encode()).decode()
        for t in issued
    ]
    secrets.append(
        base64.b64encode(f"\0{password_user.name}\0{password_user.password}".encode()).decode()
    )
    assert len(issued) >= 1
    places = {
        "stderr": done.stderr,
        "stdout": done.stdout,
        "metrics": textfile.read_text(encoding="utf-8"),
        "database": _table_text(tmp_path / "db.sqlite"),
    }
    leaks = [
        f"{secret[:6]}… in {place}"
        for secret in secrets
        for place, text in places.items()
        if secret in text
    ]
    assert leaks == []
