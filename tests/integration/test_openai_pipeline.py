"""The sample mailbox through the model path, against a loopback OpenAI-compatible server."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from invoicesync import load_settings, run
from invoicesync.report import print_summary
from invoicesync.store.db import Database
from invoicesync.store.schema import Document, InvoiceRow, Run
from tests.conftest import EXAMPLES
from tests.helpers import exported
from tests.openai_server import OpenAIServer, Reply, error_reply, invoice_reply

# Sample PDFs without e-invoice XML that have a text layer: each must cost one model call.
MODEL_PDFS = 7  # saeco, AWS, QualityHosting, Netpresse, free_fiber, the AGB, the rendering PDF


def _distinct(body: dict[str, Any]) -> Reply:
    """A valid invoice whose number is derived from the document text: one invoice per PDF."""
    text = body["messages"][-1]["content"]
    return invoice_reply(invoice_number=hashlib.sha1(str(text).encode()).hexdigest()[:10])


def _config(tmp_path: Path, server: OpenAIServer, extra: str = "") -> Path:
    config = tmp_path / "c.toml"
    config.write_text(
        f"""
[database]
url = "{_url(tmp_path)}"
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
{extra}
[[accounts]]
name = "sample"
maildir = "{EXAMPLES / "mailbox"}"
""",
        encoding="utf-8",
    )
    return config


# Every test runs on SQLite and on PostgreSQL (parallel extraction writes concurrently).
_URLS: dict[Path, str] = {}


@pytest.fixture(autouse=True)
def _database(db_url: str, tmp_path: Path) -> Iterator[None]:
    _URLS[tmp_path] = db_url
    yield
    del _URLS[tmp_path]


def _url(tmp_path: Path) -> str:
    return _URLS[tmp_path]


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
    records = exported(_url(tmp_path))
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
    database = Database(_url(tmp_path))
    with database.session() as session:
        pending = session.scalars(select(Document).where(Document.status == "pending")).all()
    database.dispose()
    assert len(pending) == MODEL_PDFS and all(d.attempts == 0 for d in pending)
    openai_server.default = _distinct
    healed = run(load_settings(config))
    assert healed.exit_code == 0 and openai_server.calls == 1 + MODEL_PDFS
    assert len(exported(_url(tmp_path))) == 9 + MODEL_PDFS - 1 + 1


def test_a_429_storm_is_survived(openai_server: OpenAIServer, tmp_path: Path) -> None:
    """Each document's first two requests get a 429 with Retry-After: all arrive, exit 0."""
    refused: dict[str, int] = {}
    lock = threading.Lock()

    def storm(body: dict[str, Any]) -> Reply:
        text = str(body["messages"][-1]["content"])
        with lock:
            refused[text] = refused.get(text, 0) + 1
            if refused[text] <= 2:
                return error_reply(429, "Rate limit reached", headers={"Retry-After": "1"})
        return _distinct(body)

    openai_server.default = storm
    result = run(load_settings(_config(tmp_path, openai_server)))
    assert result.exit_code == 0, result.accounts
    assert openai_server.calls == 3 * MODEL_PDFS
    assert result.accounts[0].failed == 4  # the sample's decoys only
    assert sum(r["provenance"]["extractor"] == "openai" for r in _records(tmp_path)) == MODEL_PDFS


def _db(tmp_path: Path) -> Database:
    return Database(_url(tmp_path))


def _forget_model_invoices(tmp_path: Path) -> int:
    """The state a crash leaves between the model's answer and the invoice's commit."""
    database = _db(tmp_path)
    with database.transaction() as session:
        rows = session.execute(
            select(InvoiceRow.id, InvoiceRow.document_id).where(InvoiceRow.extractor == "openai")
        ).all()
        documents = [document for _, document in rows]
        session.execute(delete(InvoiceRow).where(InvoiceRow.extractor == "openai"))
        session.execute(update(Document).where(Document.id.in_(documents)).values(status="pending"))
    database.dispose()
    return len(documents)


def _records(tmp_path: Path) -> list[dict[str, Any]]:
    records = [json.loads(r) for _, r in exported(_url(tmp_path))]
    for record in records:
        record.pop("created_at", None)
    return records


def test_summary_counts_calls_tokens_and_cost_and_each_invoice_keeps_its_tokens(
    openai_server: OpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    openai_server.default = _distinct
    config = _config(
        tmp_path, openai_server, '[openai.prices]\n"gpt-4o-mini" = {input = 2, output = 10}'
    )
    result = run(load_settings(config))
    assert result.exit_code == 0
    usage = result.model
    assert usage is not None and usage.model == "gpt-4o-mini"
    # The loopback server reports 100 prompt and 20 completion tokens per answer.
    assert (usage.calls, usage.cache_hits) == (MODEL_PDFS, 0)
    assert (usage.prompt_tokens, usage.completion_tokens) == (100 * MODEL_PDFS, 20 * MODEL_PDFS)
    assert usage.cost_usd == pytest.approx((100 * 2 + 20 * 10) * MODEL_PDFS / 1e6)
    print_summary(result)
    assert (
        f"model gpt-4o-mini: {MODEL_PDFS} call(s), 0 cache hit(s), {100 * MODEL_PDFS} prompt"
        f" + {20 * MODEL_PDFS} completion tokens, estimated cost ~$0.0028"
    ) in " ".join(capsys.readouterr().out.split())
    database = _db(tmp_path)
    with database.session() as session:
        tokens = session.execute(
            select(InvoiceRow.extractor, InvoiceRow.prompt_tokens, InvoiceRow.completion_tokens)
        ).all()
        [counts] = session.scalars(select(Run.counts).where(Run.id == result.run_id)).all()
    database.dispose()
    assert sorted({tuple(t) for t in tokens}) == [("einvoice", None, None), ("openai", 100, 20)]
    assert counts["model"]["calls"] == MODEL_PDFS
    assert counts["model"]["cost_usd"] == pytest.approx(usage.cost_usd)


def test_a_crash_after_the_answers_costs_no_second_call(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    """Readings are cached as they arrive: the next run answers from the cache, same records."""
    openai_server.default = _distinct
    config = _config(tmp_path, openai_server)
    assert run(load_settings(config)).exit_code == 0
    before = _records(tmp_path)
    assert _forget_model_invoices(tmp_path) == MODEL_PDFS
    again = run(load_settings(config))
    assert again.exit_code == 0 and openai_server.calls == MODEL_PDFS
    assert again.model is not None
    assert (again.model.calls, again.model.cache_hits, again.model.prompt_tokens) == (
        0,
        MODEL_PDFS,
        0,
    )
    assert _records(tmp_path) == before


@pytest.mark.parametrize(
    "cache", ["[cache]\nenabled = false", "[cache]\nttl_hours = 0.0000001"], ids=["off", "expired"]
)
def test_without_a_valid_cache_entry_the_model_is_asked_again(
    openai_server: OpenAIServer, tmp_path: Path, cache: str
) -> None:
    openai_server.default = _distinct
    config = _config(tmp_path, openai_server, cache)
    assert run(load_settings(config)).exit_code == 0
    _forget_model_invoices(tmp_path)
    again = run(load_settings(config))
    assert again.exit_code == 0 and openai_server.calls == 2 * MODEL_PDFS
    assert again.model is not None and again.model.cache_hits == 0


def test_a_failing_endpoint_opens_its_breaker_and_the_rest_waits_for_the_next_run(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    """5xx on every request: 3 documents × 2 attempts, then the breaker; nothing lost.

    One request at a time, so that no fourth document is already in flight when the
    breaker opens (with more, the count depends on which thread is faster).
    """
    openai_server.default = error_reply(500, "upstream failed")
    config = _config(tmp_path, openai_server, "[breaker]\nthreshold = 3")
    text = config.read_text(encoding="utf-8").replace(
        "time_scale = 0", "time_scale = 0\nopenai = 2"
    )
    config.write_text(text.replace("max_concurrency = 2", "max_concurrency = 1"), encoding="utf-8")
    down = run(load_settings(config))
    [summary] = down.accounts
    assert down.exit_code == 1 and summary.status == "partial"
    assert openai_server.calls == 3 * 2
    assert (summary.retry_later, summary.left_pending) == (3, MODEL_PDFS - 3)
    assert "circuit open for openai http://127.0.0.1" in (summary.error or "")
    openai_server.default = _distinct
    healed = run(load_settings(config))
    assert healed.exit_code == 0 and openai_server.calls == 3 * 2 + MODEL_PDFS
    assert sum(r["provenance"]["extractor"] == "openai" for r in _records(tmp_path)) == MODEL_PDFS


def test_an_account_reads_its_documents_side_by_side_up_to_max_concurrency(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    """One account, slow answers: exactly max_concurrency requests in flight, all stored once."""
    openai_server.default = lambda body: replace(_distinct(body), delay=0.3)
    config = _config(tmp_path, openai_server)
    config.write_text(
        config.read_text(encoding="utf-8").replace("max_concurrency = 2", "max_concurrency = 3"),
        encoding="utf-8",
    )
    result = run(load_settings(config))
    assert result.exit_code == 0 and openai_server.calls == MODEL_PDFS
    assert openai_server.max_in_flight == 3
    [summary] = result.accounts
    assert summary.invoices + summary.duplicates == len(_records(tmp_path)) == 9 + MODEL_PDFS


def test_a_failing_endpoint_side_by_side_stops_after_the_documents_in_flight(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    """The same with two requests at a time: once the breaker opens, only a document already
    in flight may still fail; every other one waits, untried, and the next run stores all."""
    openai_server.default = error_reply(500, "upstream failed")
    config = _config(tmp_path, openai_server, "[breaker]\nthreshold = 3")
    config.write_text(
        config.read_text(encoding="utf-8").replace("time_scale = 0", "time_scale = 0\nopenai = 2"),
        encoding="utf-8",
    )
    down = run(load_settings(config))
    [summary] = down.accounts
    assert down.exit_code == 1 and summary.status == "partial"
    assert summary.retry_later in (3, 4)  # the third failure opens it; one more may be in flight
    assert openai_server.calls == 2 * summary.retry_later
    assert summary.left_pending == MODEL_PDFS - summary.retry_later
    failed_calls = openai_server.calls
    openai_server.default = _distinct
    healed = run(load_settings(config))
    assert healed.exit_code == 0 and openai_server.calls == failed_calls + MODEL_PDFS
    assert sum(r["provenance"]["extractor"] == "openai" for r in _records(tmp_path)) == MODEL_PDFS
