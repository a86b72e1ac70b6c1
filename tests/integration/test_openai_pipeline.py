"""The sample mailbox through the model path, against a loopback OpenAI-compatible server."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from invoicesync import load_settings, run
from invoicesync.store.db import Database
from invoicesync.store.schema import Document
from tests.conftest import EXAMPLES
from tests.helpers import exported
from tests.openai_server import OpenAIServer, Reply, error_reply, invoice_reply

# Sample PDFs without e-invoice XML that have a text layer: each must cost one model call.
MODEL_PDFS = 7  # saeco, AWS, QualityHosting, Netpresse, free_fiber, the AGB, the rendering PDF


def _distinct(body: dict[str, Any]) -> Reply:
    """A valid invoice whose number is derived from the document text: one invoice per PDF."""
    text = body["messages"][-1]["content"]
    return invoice_reply(invoice_number=hashlib.sha1(str(text).encode()).hexdigest()[:10])


def _config(tmp_path: Path, server: OpenAIServer) -> Path:
    config = tmp_path / "c.toml"
    config.write_text(
        f"""
[database]
url = "sqlite:///{tmp_path / "db.sqlite"}"
[storage]
dir = "{tmp_path / "docs"}"
[retries]
time_scale = 0
[openai]
api_key_env = "TEST_OPENAI_KEY"
base_url = "{server.url}"
max_concurrency = 2
[timeouts]
openai = 5
[[accounts]]
name = "sample"
maildir = "{EXAMPLES / "mailbox"}"
""",
        encoding="utf-8",
    )
    return config


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-test-pipeline-0123456789")


def test_every_pdf_without_xml_costs_one_model_call(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    """E-invoices need no call; other PDFs one each; a second run none; concurrency respected."""
    openai_server.default = _distinct
    config = _config(tmp_path, openai_server)
    first = run(load_settings(config))
    assert first.exit_code == 0, first.accounts
    assert openai_server.calls == MODEL_PDFS
    assert openai_server.max_in_flight <= 2
    records = exported(f"sqlite:///{tmp_path / 'db.sqlite'}")
    extractors = [r for _, r in records]
    # The stub model calls everything an invoice, the AGB too; the rendering PDF gets its own
    # number from the stub, so it is not recognised as the XML invoice's rendering.
    assert sum('"extractor": "openai"' in r for r in extractors) == MODEL_PDFS
    assert sum('"extractor": "einvoice"' in r for r in extractors) == 9
    second = run(load_settings(config))
    assert second.exit_code == 0 and openai_server.calls == MODEL_PDFS


def test_401_stops_calling_the_endpoint_and_the_next_run_completes(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    """A refused key: one call, exit 3, documents pending; a healthy run finishes, no duplicates."""
    openai_server.default = error_reply(401, "Incorrect API key provided")
    config = _config(tmp_path, openai_server)
    refused = run(load_settings(config))
    [summary] = refused.accounts
    assert refused.exit_code == 3 and summary.status == "fatal"
    assert openai_server.calls == 1
    assert "sk-test" not in (summary.error or "")
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with database.session() as session:
        pending = session.scalars(select(Document).where(Document.status == "pending")).all()
    database.dispose()
    assert len(pending) == MODEL_PDFS and all(d.attempts == 0 for d in pending)
    openai_server.default = _distinct
    healed = run(load_settings(config))
    assert healed.exit_code == 0 and openai_server.calls == 1 + MODEL_PDFS
    assert len(exported(f"sqlite:///{tmp_path / 'db.sqlite'}")) == 9 + MODEL_PDFS - 1 + 1


def test_a_429_storm_is_survived(openai_server: OpenAIServer, tmp_path: Path) -> None:
    """Every other answer a 429 with Retry-After: all invoices arrive, exit 0."""
    openai_server.default = _distinct
    openai_server.script(
        *[
            error_reply(429, "Rate limit reached", headers={"Retry-After": "1"})
            if i % 2 == 0
            else _distinct
            for i in range(2 * MODEL_PDFS)
        ]
    )
    result = run(load_settings(_config(tmp_path, openai_server)))
    assert result.exit_code == 0
    assert result.accounts[0].invoices >= MODEL_PDFS - 1
