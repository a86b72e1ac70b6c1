"""Log lines: context fields, JSON shape, and secrets removed whatever their source."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from invoicesync import logs
from invoicesync.config import Settings


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    logs.configure(fmt="json", level=logging.DEBUG, stream=out)
    yield out
    for handler in list(root.handlers):
        if handler.get_name() == "invoicesync":
            root.removeHandler(handler)
    for handler in saved[0]:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(saved[1])


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_json_line_has_every_context_field(stream: io.StringIO) -> None:
    log = logging.getLogger("invoicesync.test")
    log.info("outside")
    with logs.log_context(run_id=7, account="acme"):
        with logs.log_context(stage="ingest", message_key="1:42"):
            log.warning("inside %s", "mail")
        log.error("after")
    outside, inside, after = _lines(stream)
    for line in (outside, inside, after):
        assert set(logs.CONTEXT_FIELDS) <= set(line)
        assert {"ts", "level", "logger", "message"} <= set(line)
    assert outside["run_id"] is None
    assert inside["message"] == "inside mail" and inside["level"] == "warning"
    assert (inside["run_id"], inside["account"], inside["stage"], inside["message_key"]) == (
        7,
        "acme",
        "ingest",
        "1:42",
    )
    assert (after["stage"], after["account"]) == (None, "acme")


def test_context_is_per_thread(stream: io.StringIO) -> None:
    log = logging.getLogger("invoicesync.test")

    def work(name: str) -> None:
        with logs.log_context(account=name):
            log.warning("from %s", name)

    threads = [threading.Thread(target=work, args=(f"a{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for line in _lines(stream):
        assert line["message"] == f"from {line['account']}"


def test_exceptions_are_one_line_of_json(stream: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed")
    [line] = _lines(stream)
    assert "ValueError: boom" in str(line["exception"])


def test_registered_and_settings_secrets_never_appear(stream: io.StringIO) -> None:
    settings = Settings.model_validate(
        {
            "openai": {"api_key": SecretStr("key-from-config-1234")},
            "accounts": [
                {"name": "a", "imap_host": "h", "username": "u", "password": "hunter2-pw"}
            ],
        }
    )
    logs.register_settings_secrets(settings)
    logs.register_secret("ya29.access-token-xyz")
    log = logging.getLogger("lib")
    log.debug("login u hunter2-pw; key key-from-config-1234; token ya29.access-token-xyz")
    try:
        raise RuntimeError("server said: bad token ya29.access-token-xyz")
    except RuntimeError:
        log.exception("auth failed for hunter2-pw")
    text = stream.getvalue()
    for secret in ("hunter2-pw", "key-from-config-1234", "ya29.access-token-xyz"):
        assert secret not in text
    assert text.count("[redacted]") >= 5


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("key sk-proj-abcdefgh12345678 refused", "abcdefgh12345678"),
        ("Authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi.payload.sig"),
        ("GET https://user:pa55word@host.example/x", "pa55word"),
        (
            "download https://s3.example/inv.pdf?X-Amz-Signature=deadbeef&X-Amz-Credential=AK",
            "deadbeef",
        ),
        (
            'http://127.0.0.1:80 "GET /inv.pdf?X-Amz-Signature=cafe1234&t=x HTTP/1.1" 200',
            "cafe1234",
        ),
    ],
)
def test_secret_shapes_are_redacted_without_registration(
    stream: io.StringIO, line: str, secret: str
) -> None:
    logging.getLogger("lib").warning(line)
    assert secret not in stream.getvalue()


def test_text_format_shows_context_and_redacts(stream: io.StringIO) -> None:
    out = io.StringIO()
    logs.configure(fmt="text", level=logging.INFO, stream=out)
    with logs.log_context(run_id=3, account="acme"):
        logging.getLogger("invoicesync.x").info("link https://h.example/a?sig=abc123")
    text = out.getvalue()
    assert "[run_id=3 account=acme]" in text
    assert "https://h.example/a?…" in text and "abc123" not in text
