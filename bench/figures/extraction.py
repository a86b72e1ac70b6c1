"""Figure 3: the extraction stage against a slow model, and what duplicates cost.

A local Maildir carries ``unique`` distinct text PDFs, one per mail, and every
``DUPLICATED_EVERY``-th of them again in further mails (``COPIES`` mails in all). The
model is the loopback OpenAI-compatible server of the tests, answering each request after
``ctx.latency`` seconds with an invoice whose number comes from the document text, so no
two documents collapse into one invoice by business key.

One ``invoicesync run`` reads the mailbox. The server records when each request arrived
and when its answer was sent; the extraction stage is the span from the first arrival to
the last answer, compared with the ideal ``ceil(unique / c) · L`` of ``c`` requests always
in flight. The same timeline shows where the rest goes: the first request alone (the key is
proven before requests go side by side), slots left empty between one answer and the next
request, and moments with nothing in flight. The model calls must equal the unique
documents, never exceed ``max_concurrency`` at once, and a second run must make none.

Run alone: ``.venv/bin/python -m bench.figures.extraction``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from bench.common import Context, Figure, timed
from invoicesync.export import invoice_records
from invoicesync.store.db import Database
from invoicesync.store.schema import Document
from tests.openai_server import OpenAIServer, Reply, invoice_reply
from tests.pdfs import text_pdf

UNIQUE = 40
CONCURRENCY = 4
#: every this-many-th unique PDF also arrives in other mails ...
DUPLICATED_EVERY = 4
#: ... in this many mails in all
COPIES = 3
API_KEY_ENV = "BENCH_OPENAI_KEY"
API_KEY = "sk-bench-loopback-0123456789"

__all__ = [
    "API_KEY",
    "API_KEY_ENV",
    "TimedOpenAIServer",
    "distinct_reply",
    "invoice_mail",
    "invoice_pdf",
    "measure",
    "show",
    "timeline",
    "write_maildir",
]


# ------------------------------------------------------------------------------- documents


def invoice_pdf(label: str) -> bytes:
    """A one-page invoice whose text (and so sha256 and model answer) is unique to ``label``."""
    return text_pdf(
        [
            "Muster GmbH, Hauptstrasse 1, 10115 Berlin, USt-IdNr. DE123456789",
            f"Rechnung Nr. {label}",
            "Rechnungsdatum: 01.10.2026",
            "Consulting 2 h x 50,00 EUR = 100,00 EUR",
            "Netto 100,00 EUR  USt 19 % 19,00 EUR  Brutto 119,00 EUR",
        ]
    )


def invoice_mail(index: int, pdf: bytes, filename: str) -> bytes:
    """A mail carrying ``pdf`` as an attachment; ``index`` makes its bytes unique."""
    message = EmailMessage()
    message["From"] = "Muster GmbH <billing@muster.example>"
    message["To"] = "accounts@kunde.example"
    message["Subject"] = f"Ihre Rechnung ({index})"
    when = dt.datetime(2026, 10, 1, 9, 0, tzinfo=dt.UTC) + dt.timedelta(minutes=index)
    message["Date"] = format_datetime(when)
    message["Message-ID"] = make_msgid(f"bench{index}", domain="muster.example")
    message.set_content("Anbei Ihre Rechnung.\n")
    message.add_attachment(pdf, maintype="application", subtype="pdf", filename=filename)
    return message.as_bytes()


def write_maildir(path: Path, mails: Sequence[bytes]) -> None:
    """A Maildir at ``path`` holding ``mails`` in ``cur/``, all read."""
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    for number, raw in enumerate(mails, start=1):
        (path / "cur" / f"{1_700_000_000 + number}.M{number}P1.bench:2,S").write_bytes(raw)


# ---------------------------------------------------------------------------------- model


def distinct_reply(latency: float) -> Callable[[dict[str, Any]], Reply]:
    """A responder: after ``latency`` s, an invoice numbered by the document text's hash."""

    def reply(body: dict[str, Any]) -> Reply:
        text = str(body["messages"][-1]["content"])
        number = hashlib.sha1(text.encode()).hexdigest()[:10]
        return invoice_reply(delay=latency, invoice_number=number)

    return reply


class TimedOpenAIServer(OpenAIServer):
    """The tests' loopback server, also recording each request's (arrival, answer sent).

    Its handler sets TCP_NODELAY: ``http.server`` writes the status line and headers and then
    the body as separate small segments, and with Nagle's algorithm the body waits for the
    client's delayed ACK of the headers, up to 40 ms per answer on Linux loopback, after the
    server already counts the answer as sent. A real endpoint has no such stall.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[tuple[float, float]] = []

    def timeline(self) -> list[tuple[float, float]]:
        with self._lock:
            return sorted(self.spans)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        base = super()._handler()
        server = self

        class Timed(base):  # type: ignore[valid-type,misc]
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                started = time.perf_counter()
                try:
                    super().do_POST()
                finally:
                    ended = time.perf_counter()
                    with server._lock:
                        server.spans.append((started, ended))

        return Timed


def timeline(spans: Sequence[tuple[float, float]], concurrency: int) -> dict[str, Any]:
    """Where the time of a request timeline goes, seen from the server.

    ``slot_seconds_lost``: c x span minus the request time served; ``refill``: for each
    answer followed by a later request, the wait until that next request arrived (a slot
    standing empty while work remained); ``idle``: stretches with nothing in flight;
    ``waves``: groups of requests sent together (ideally ``ceil(N/c)`` waves of ``c``), and
    ``between_waves_s``: the span not covered by ``waves`` x the mean request time.
    """
    if not spans:
        return {"requests": 0}
    first = min(start for start, _ in spans)
    last = max(end for _, end in spans)
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    at_level: dict[int, float] = {}
    level, previous = 0, first
    idle: list[float] = []
    for moment, step in events:
        at_level[level] = at_level.get(level, 0.0) + moment - previous
        if level == 0 and moment > previous:
            idle.append(moment - previous)
        level, previous = level + step, moment
    starts = sorted(start for start, _ in spans)
    refill = []
    for _, end in spans:
        later = [start for start in starts if start >= end]
        if later:
            refill.append(later[0] - end)
    served = sum(end - start for start, end in spans)
    span = last - first
    # Waves: requests that start within half a request time of a wave's first start went
    # out together; c per wave is the ideal, a wave that starts late is time lost.
    waves: list[list[float]] = []
    for start in starts:
        if waves and start - waves[-1][0] < served / len(spans) / 2:
            waves[-1].append(start)
        else:
            waves.append([start])
    return {
        "requests": len(spans),
        "span_s": round(span, 3),
        "mean_request_s": round(served / len(spans), 3),
        "first_request_alone_s": round(starts[1] - starts[0], 3) if len(starts) > 1 else None,
        "seconds_at_in_flight": {str(k): round(v, 3) for k, v in sorted(at_level.items())},
        "slot_seconds_lost": round(concurrency * span - served, 3),
        "utilisation": round(served / (concurrency * span), 3) if span else None,
        "idle_gaps": len(idle),
        "idle_total_s": round(sum(idle), 3),
        "idle_max_s": round(max(idle, default=0.0), 3),
        "waves": len(waves),
        "wave_widths": [len(wave) for wave in waves],
        "between_waves_s": round(span - len(waves) * served / len(spans), 3),
        "refills": len(refill),
        "refill_mean_ms": round(1000 * sum(refill) / len(refill), 1) if refill else None,
        "refill_max_ms": round(1000 * max(refill), 1) if refill else None,
    }


# -------------------------------------------------------------------------------- measure


def _config(root: Path, url: str, server: OpenAIServer, concurrency: int) -> Path:
    config = root / "c.toml"
    config.write_text(
        f"""
[database]
url = "{url}"
[storage]
dir = "{root / "docs"}"
[retries]
time_scale = 0
[links]
enabled = false
[cache]
enabled = true
[openai]
api_key_env = "{API_KEY_ENV}"
base_url = "{server.url}"
max_concurrency = {concurrency}
[[accounts]]
name = "bench"
maildir = "{root / "mailbox"}"
""",
        encoding="utf-8",
    )
    return config


def _stored(url: str) -> tuple[int, int]:
    """(documents, live invoices) in the database at ``url``."""
    database = Database(url)
    try:
        with database.session() as session:
            documents = len(session.query(Document.id).all())
        live = len(invoice_records(database))
    finally:
        database.dispose()
    return documents, live


def measure(
    ctx: Context,
    *,
    unique: int = UNIQUE,
    concurrency: int = CONCURRENCY,
    database_url: str | None = None,
) -> list[Figure]:
    """Figure 3: extraction span vs ceil(N/c)·L, and model calls vs unique documents.

    The run writes to a SQLite file in the scratch directory unless ``database_url``
    names an empty database.
    """
    latency = ctx.latency
    root = ctx.work / "extraction"
    root.mkdir(parents=True, exist_ok=True)
    pdfs = [invoice_pdf(f"BENCH-{i:04d}") for i in range(unique)]
    mails = [invoice_mail(i, pdf, f"rechnung-{i:04d}.pdf") for i, pdf in enumerate(pdfs)]
    duplicated = pdfs[::DUPLICATED_EVERY]
    for copy in range(1, COPIES):
        mails += [
            invoice_mail(len(mails) + n, pdf, f"kopie-{copy}-{n:04d}.pdf")
            for n, pdf in enumerate(duplicated)
        ]
    write_maildir(root / "mailbox", mails)
    url = database_url or f"sqlite:///{root / 'db.sqlite'}"

    server = TimedOpenAIServer()
    server.default = distinct_reply(latency)
    server.start()
    try:
        config = _config(root, url, server, concurrency)
        command = [ctx.python, "-m", "invoicesync", "--config", str(config), "-q", "run"]
        env = {API_KEY_ENV: API_KEY}
        wall, _ = timed(command, cwd=root, env=env)
        spans = server.timeline()
        calls, max_in_flight = server.calls, server.max_in_flight
        again_wall, _ = timed(command, cwd=root, env=env)
        again_calls = server.calls - calls
    finally:
        server.close()

    documents, live = _stored(url)
    shape = timeline(spans, concurrency)
    ideal = math.ceil(unique / concurrency) * latency
    proven_first = (1 + math.ceil((unique - 1) / concurrency)) * latency
    common = {
        "unique_pdfs": unique,
        "mails": len(mails),
        "duplicated_pdfs": len(duplicated),
        "copies_each": COPIES,
        "max_concurrency": concurrency,
        "latency_s": latency,
        "max_in_flight": max_in_flight,
        "max_in_flight_within_c": max_in_flight <= concurrency,
        "database": url.split(":", 1)[0],
    }
    span = shape.get("span_s", 0.0)
    return [
        Figure(
            name="extraction_vs_ideal",
            value=span,
            unit="s",
            baseline=ideal,
            baseline_name="ceil(N/c)·L",
            target=1.25,
            note=(
                "server-side span from the first request's arrival to the last answer;"
                f" with the first request alone (key proving) the floor is"
                f" (1+ceil((N-1)/c))·L = {proven_first:.2f} s"
            ),
            extra={
                **common,
                "run_wall_s": round(wall, 3),
                "outside_span_s": round(wall - span, 3),
                "floor_with_first_alone_s": round(proven_first, 3),
                "timeline": shape,
            },
        ),
        Figure(
            name="model_calls_vs_unique_documents",
            value=float(calls),
            unit="calls",
            baseline=float(unique),
            baseline_name="unique documents",
            target=1.0,
            note="every unique PDF read once, copies none; a second run of the mailbox none",
            extra={
                **common,
                "calls_equal_unique": calls == unique,
                "documents_stored": documents,
                "live_invoices": live,
                "second_run_calls": again_calls,
                "second_run_wall_s": round(again_wall, 3),
            },
        ),
    ]


def show(figures: Sequence[Figure]) -> None:
    """Print figures for a run on their own."""
    for figure in figures:
        ratio = figure.ratio
        print(
            f"{figure.name}: {figure.value:g} {figure.unit}"
            f" vs {figure.baseline_name} {figure.baseline}"
            f" -> ratio {'-' if ratio is None else f'{ratio:.3f}'}"
            f" (target {figure.target}, holds {figure.holds})"
        )
        if figure.note:
            print(f"  {figure.note}")
        for key, value in asdict(figure)["extra"].items():
            print(f"  {key}: {value}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="bench-extraction-") as scratch:
        show(measure(Context(work=Path(scratch))))
