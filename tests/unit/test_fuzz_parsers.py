"""Fuzz targets: every parser of untrusted bytes, fed deterministic mutations of real inputs.

Seeds are the sample mailbox (examples/mailbox) and the corpus (tests/corpus); each input
is a seed changed by a few byte-level steps drawn from ``random.Random(target:run)``: bit
flips, inserted tokens or random bytes, deleted, duplicated or repeated chunks, splices
with another seed, truncation. The same run number always gives the same input, so a
failure names its reproducer. Each target asserts that only ``InvoiceSyncError`` escapes
and that no single input takes longer than ``PER_INPUT`` seconds.

The default suite runs ``RUNS`` inputs per target (a few seconds each); the ``slow`` variant
runs ``SLOW_RUNS``. PDFium is native code that may crash the interpreter on hostile input:
it is fed only the mutations pypdf accepts (as ``pdf_text`` itself does), and in a child
process, so that a crash fails the test with its input instead of killing the run.
"""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from imapclient.response_parser import parse_fetch_response
from lxml import etree

from invoicesync.errors import InvoiceSyncError
from invoicesync.extract.einvoice import EInvoiceExtractor, parse_einvoice
from invoicesync.extract.offline import parse_text
from invoicesync.extract.pdf import embedded_files, first_pages, open_pdf
from invoicesync.fetch.links import rank_links
from invoicesync.mail.mime import parse_mail
from invoicesync.mail.structure import is_document_prefix, plan_fetch
from tests.conftest import CORPUS, EXAMPLES, ROOT
from tests.pdfs import text_pdf
from tests.unit.test_structure import fetch_response

RUNS = 300
SLOW_RUNS = 10_000
PER_INPUT = 5.0  # seconds for any one input
MAX_INPUT = 1024 * 1024  # mutated inputs are cut to this size

Target = Callable[[bytes], object]

# --------------------------------------------------------------------------- mutations


class Mutator:
    """Deterministic byte-level mutations of ``seeds``, with ``tokens`` to insert."""

    def __init__(self, seeds: Sequence[bytes], tokens: Sequence[bytes]) -> None:
        assert seeds
        self.seeds = list(seeds)
        self.tokens = list(tokens)

    def input(self, name: str, run: int) -> bytes:
        rng = random.Random(f"{name}:{run}")
        data = bytearray(rng.choice(self.seeds))
        for _ in range(rng.randint(1, 6)):
            self._step(rng, data)
        return bytes(data[:MAX_INPUT])

    def _step(self, rng: random.Random, data: bytearray) -> None:
        at = rng.randint(0, len(data))
        step = rng.choice(("flip", "insert", "random", "delete", "duplicate", "splice", "cut"))
        if step == "flip" and data:
            at = min(at, len(data) - 1)
            data[at] ^= 1 << rng.randrange(8)
        elif step == "insert" and self.tokens:
            data[at:at] = rng.choice(self.tokens) * rng.choice((1, 1, 2, 16, 1000))
        elif step == "random":
            data[at:at] = rng.randbytes(rng.randint(1, 16))
        elif step == "delete":
            del data[at : at + rng.randint(1, 256)]
        elif step == "duplicate" and data:
            start = rng.randrange(len(data))
            chunk = data[start : start + rng.randint(1, 512)]
            data[at:at] = chunk * rng.choice((1, 2, 8, 100))
        elif step == "splice":
            other = rng.choice(self.seeds)
            data[at:] = other[rng.randint(0, len(other)) :]
        elif step == "cut":
            del data[at:]


def fuzz(name: str, target: Target, mutator: Mutator, runs: int, tmp_path: Path) -> float:
    """Runs ``target`` on ``runs`` inputs; returns the slowest input's time in seconds."""
    slowest = 0.0
    for run in range(runs):
        data = mutator.input(name, run)
        start = time.perf_counter()
        try:
            target(data)
        except InvoiceSyncError:
            pass
        except Exception as exc:
            saved = _save(tmp_path, name, run, data)
            pytest.fail(f"{name} run {run}: {type(exc).__name__}: {exc} (input: {saved})")
        elapsed = time.perf_counter() - start
        if elapsed > PER_INPUT:
            saved = _save(tmp_path, name, run, data)
            pytest.fail(f"{name} run {run}: {elapsed:.1f} s for one input (input: {saved})")
        slowest = max(slowest, elapsed)
    return slowest


def _save(tmp_path: Path, name: str, run: int, data: bytes) -> Path:
    path = tmp_path / f"{name}-{run}.bin"
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------ seeds

MAILBOX = sorted((EXAMPLES / "mailbox").glob("*/*"))
PDFS = sorted(CORPUS.glob("*/*.pdf"), key=lambda path: path.stat().st_size)
XMLS = sorted(CORPUS.glob("zugferd-corpus/*.xml"))

MIME_TOKENS = [
    b"\n",
    b"\r\n\r\n",
    b"--",
    b": ",
    b"; ",
    b'"',
    b"=?utf-8?q?a=C3=A4?=",
    b"=?idna?b?YQ==?=",
    b"filename*0*=utf-8''%C3%A4; ",
    b"charset=idna",
    b"charset=\x00",
    b"Content-Type: message/rfc822\n",
    b"Content-Type: multipart/mixed; boundary=B\n\n--B\n",
    b"Content-Transfer-Encoding: base64\n",
    b"Content-Transfer-Encoding: quoted-printable\n",
    b"Content-Transfer-Encoding: x-uuencode\n",
    b"%PDF-",
    b"<a href='https://a.example/r.pdf'>",
    b"https://billing.example/",
    b")",
    b"<",
    b"\x00",
    b"\xff",
    b" ",
]
PDF_TOKENS = [
    b"obj",
    b"endobj",
    b"stream\n",
    b"endstream",
    b"<<",
    b">>",
    b"[",
    b"]",
    b" 0 R",
    b"/Filter /FlateDecode",
    b"/Length 99999999",
    b"/Type /Pages /Kids [",
    b"/EmbeddedFiles << /Names [(factur-x.xml) 1 0 R] >>",
    b"/EF << /F 1 0 R >>",
    b"xref\n0 1\n",
    b"trailer",
    b"startxref\n",
    b"%%EOF",
    b"(",
    b"\\",
    b"-1",
    b"99999999999",
]
XML_TOKENS = [
    b"<",
    b">",
    b"</",
    b"/>",
    b'="',
    b"&amp;",
    b"&#0;",
    b"<![CDATA[",
    b"<!DOCTYPE",
    b"<?xml",
    b"xmlns:",
    b"-1",
    b"1e999",
    b"NaN",
    b"99999999999999999999999999",
    b"2024-13-45",
    b"\xff",
    b"\x00",
]
TEXT_TOKENS = [
    b"Invoice ",
    b"Rechnung Nr. ",
    b"Total ",
    b"total due ",
    b"Bruttosumme ",
    b"Verk\xc3\xa4ufer: ",
    b"USt-IdNr. DE ",
    b"Date: ",
    b"3. Ma\xc4\xb1 2024",
    b"Augu\xc5\xbft 3, 2014",
    b"R\xc5\xbf 10",
    b"1.234,56 ",
    b"1 234,56",
    b"12'345.00",
    b"-",
    b"%",
    b"\xe2\x82\xac",
    b"$",
    b"Rs ",
    b"05.03.2024",
    b"03/08/2014",
    b" ",
    b"\t",
    b",",
    b"\n",
    b"--- page 2 ---\n",
]
LINK_TOKENS = [
    b"https://",
    b"http://[",
    b"::1]",
    b"%",
    b"%ff",
    b"%ed%a0%80",
    b"\xed\xa0\x80",
    b"?",
    b"#",
    b"@",
    b":",
    b"/",
    b".pdf",
    b"invoice",
    b"unsubscribe",
    b"\xef\xbc\x8f",
    b"\x00",
    b" ",
]


def _links_seeds() -> list[bytes]:
    links = [
        b"https://billing.example.com/invoices/INV-2024-001.pdf?a=1&b=2",
        b"https://www.facebook.com/acme",
        b"http://[::1]:8080/rechnung",
        b"mailto:a@b.example",
        b"https://x.example/unsubscribe?u=1",
        b"https://t.example/pixel.gif",
    ]
    for path in MAILBOX:
        try:
            links += [link.encode() for link in parse_mail(path.read_bytes()).links]
        except InvoiceSyncError:
            continue
    return links


def _bodystructure_seeds() -> list[list[bytes | tuple[bytes, bytes]]]:
    seeds = []
    for path in MAILBOX:
        try:
            seeds.append(fetch_response(path.read_bytes()))
        except Exception:  # the test renderer does not cover every sample; others do
            continue
    return seeds


# ----------------------------------------------------------------------------- targets


def mime_target(data: bytes) -> None:
    parsed = parse_mail(data)
    assert all(attachment.kind in ("pdf", "xml") for attachment in parsed.attachments)
    assert all(link.lower().startswith(("http://", "https://")) for link in parsed.links)


class BodystructureTarget:
    """Plans the fetch of a mutated BODYSTRUCTURE: half the time one element of a FETCH
    response (imaplib's list) is mutated and parsed as imapclient does (responses it
    refuses are not ours), half the time the parsed structure itself is changed."""

    SCALARS: ClassVar[list[object]] = [None, b"", b"NIL", 0, -1, 2**70, True, "s", b"\xff"]
    SCALARS += [(), [], (b"x",), b"text", b"plain", b"message", b"rfc822", b"base64"]

    def __init__(self, responses: Sequence[list[bytes | tuple[bytes, bytes]]]) -> None:
        self.responses = list(responses)
        self.refused_by_imapclient = 0

    def mutator(self) -> Mutator:
        # The "bytes" fuzzed are a JSON index into the responses plus the mutated element.
        seeds = [
            json.dumps([i, j]).encode() for i, r in enumerate(self.responses) for j in range(len(r))
        ]
        return Mutator(seeds, [])

    def __call__(self, data: bytes) -> None:
        rng = random.Random(data)
        index = rng.randrange(len(self.responses))
        if rng.random() < 0.5:
            [fields] = parse_fetch_response(self.responses[index]).values()
            structure = self._changed(rng, fields[b"BODYSTRUCTURE"], 0)
            plan_fetch(structure, max_document_bytes=25 * 1024 * 1024)
            return
        response = list(self.responses[index])
        at = rng.randrange(len(response))
        element = response[at]
        mutate = Mutator([b""], [*MIME_TOKENS, b"(", b")", b"NIL", b'"', b"{5}", b"{99}"])
        if isinstance(element, tuple):
            head, literal = element
            response[at] = (_mutated(mutate, rng, head), _mutated(mutate, rng, literal))
        else:
            response[at] = _mutated(mutate, rng, element)
        try:
            parsed = parse_fetch_response(response)
        except Exception:
            self.refused_by_imapclient += 1
            return
        for fields in parsed.values():
            structure = fields.get(b"BODYSTRUCTURE")
            if structure is not None:
                plan_fetch(structure, max_document_bytes=25 * 1024 * 1024)
        encoding = rng.choice(("base64", "quoted-printable", "7bit", "x-\x00"))
        is_document_prefix(_mutated(mutate, rng, b"JVBERi0xLjQK" * 8), encoding)

    def _changed(self, rng: random.Random, node: object, depth: int) -> object:
        """``node`` with random subtrees replaced, dropped, repeated or nested deeply."""
        roll = rng.random()
        if roll < 0.05:
            return rng.choice(self.SCALARS)
        if roll < 0.06:
            for _ in range(rng.choice((10, 100, 2000))):
                node = (node,) if rng.random() < 0.5 else [node, b"mixed"]
            return node
        if not isinstance(node, tuple | list):
            return node
        items = [
            self._changed(rng, item, depth + 1) if rng.random() < 0.3 else item for item in node
        ]
        if items and rng.random() < 0.2:
            del items[rng.randrange(len(items))]
        if items and rng.random() < 0.2:
            items.insert(rng.randrange(len(items)), rng.choice(items))
        return type(node)(items)


def _mutated(mutator: Mutator, rng: random.Random, data: bytes) -> bytes:
    mutator.seeds = [data]
    return mutator.input(repr(rng.random()), 0)


def pdf_check_target(data: bytes) -> None:
    open_pdf(data)
    embedded_files(data)
    first_pages(data, 1)


def offline_target(data: bytes) -> None:
    parse_text(data.decode("utf-8", "replace"))


_EINVOICE = EInvoiceExtractor()


def einvoice_target(data: bytes) -> None:
    invoice = _EINVOICE.extract(data)
    assert invoice is None or invoice.provenance.extractor == "einvoice"


class EInvoiceValuesTarget:
    """Well-formed XML with element texts replaced: reaches the mappers, not only lxml."""

    VALUES: ClassVar[list[str]] = [
        "",
        " ",
        "abc",
        "-1",
        "1e999",
        "NaN",
        "Infinity",
        "9" * 40,
        "0.0000001",
        "1,5",
    ]
    VALUES += ["2024-13-45", "20240230", "99999999", "EUR", "XXX", "\u00a0", "1 000", "+1"]

    def __init__(self, documents: Sequence[bytes]) -> None:
        self.documents = [etree.fromstring(document) for document in documents]

    def __call__(self, data: bytes) -> None:
        rng = random.Random(data)
        root = etree.fromstring(etree.tostring(rng.choice(self.documents)))
        elements = [e for e in root.iter() if isinstance(e.tag, str)]
        for element in rng.sample(elements, min(len(elements), rng.randint(1, 8))):
            step = rng.randrange(4)
            if step == 0:
                element.text = rng.choice(self.VALUES)
            elif step == 1 and element.getparent() is not None:
                element.getparent().remove(element)
            elif step == 2 and element.attrib:
                element.set(rng.choice(list(element.attrib)), rng.choice(self.VALUES))
            else:
                element.append(copy.deepcopy(element))
        parse_einvoice(etree.tostring(root))


class LinksTarget:
    """A mutated list of links (bytes read as text three ways) with contexts and a limit."""

    def __call__(self, data: bytes) -> None:
        rng = random.Random(data)
        chunks = data.split(b"\n") if rng.random() < 0.5 else data.split(b"?")
        errors = rng.choice(("surrogateescape", "replace", "ignore"))
        links = [chunk.decode("utf-8", errors) for chunk in chunks]
        if rng.random() < 0.5:
            links = [chunk.decode("latin-1") for chunk in chunks]
        context = {link: rng.choice(["Download PDF", "Rechnung", "", "\udcff"]) for link in links}
        ranked = rank_links(links, context=context, limit=rng.randint(-1, 20))
        assert set(ranked) <= set(links)


# -------------------------------------------------------------------------- PDFium


def pdfium_in_child(inputs: list[bytes], tmp_path: Path) -> dict[str, Any]:
    """``pdf_text`` on each input in a child process: a crash there fails only this test."""
    folder = tmp_path / "pdfium"
    folder.mkdir(exist_ok=True)
    for index, data in enumerate(inputs):
        (folder / f"{index:05d}.pdf").write_bytes(data)
    code = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "from invoicesync.errors import InvoiceSyncError\n"
        "from invoicesync.extract.pdf import pdf_text\n"
        "report = {'runs': 0, 'slowest': 0.0, 'foreign': []}\n"
        "for path in sorted(Path(sys.argv[1]).glob('*.pdf')):\n"
        "    print(path.name, flush=True)\n"  # the last name printed is the crasher
        "    start = time.perf_counter()\n"
        "    try:\n"
        "        pdf_text(path.read_bytes(), max_pages=10)\n"
        "    except InvoiceSyncError:\n"
        "        pass\n"
        "    except Exception as exc:\n"
        "        report['foreign'].append([path.name, repr(exc)])\n"
        "    report['slowest'] = max(report['slowest'], time.perf_counter() - start)\n"
        "    report['runs'] += 1\n"
        "print('REPORT ' + json.dumps(report))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PER_INPUT * len(inputs) + 60,
        check=False,
    )
    lines = done.stdout.splitlines()
    if done.returncode != 0 or not lines or not lines[-1].startswith("REPORT "):
        last = lines[-1] if lines else "before the first input"
        pytest.fail(f"PDFium child died (exit {done.returncode}) at {folder}/{last}: {done.stderr}")
    report: dict[str, Any] = json.loads(lines[-1].removeprefix("REPORT "))
    assert not report["foreign"], f"pdf_text raised outside the tree: {report['foreign'][:3]}"
    assert report["slowest"] < PER_INPUT
    return report


# ------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def mutators() -> dict[str, tuple[Target, Mutator]]:
    """Each target with the mutator of its seeds."""
    pdf_seeds = [path.read_bytes() for path in PDFS[:8]]
    pdf_seeds.append(text_pdf(["Rechnung Nr. 1", "Bruttosumme 1,00 EUR"], ["Seite 2"]))
    pdf_seeds.append((CORPUS / "zugferd-corpus" / "XR_EN16931_Einfach.pdf").read_bytes())
    texts = [parse_text_seed(path) for path in PDFS[:12]]
    xmls = [path.read_bytes() for path in XMLS]
    structures = BodystructureTarget(_bodystructure_seeds())
    mail_seeds = [path.read_bytes() for path in MAILBOX]
    return {
        "mime": (mime_target, Mutator(mail_seeds, MIME_TOKENS)),
        "bodystructure": (structures, structures.mutator()),
        "pdf-check": (pdf_check_target, Mutator(pdf_seeds, PDF_TOKENS)),
        "offline": (offline_target, Mutator(texts, TEXT_TOKENS)),
        "einvoice-xml": (einvoice_target, Mutator(xmls, XML_TOKENS)),
        "einvoice-values": (EInvoiceValuesTarget(xmls), Mutator([b"0"], [b"1"])),
        "einvoice-pdf": (einvoice_target, Mutator(pdf_seeds[-2:], PDF_TOKENS + XML_TOKENS)),
        "links": (LinksTarget(), Mutator([b"\n".join(_links_seeds())], LINK_TOKENS)),
    }


def parse_text_seed(path: Path) -> bytes:
    from invoicesync.extract.pdf import pdf_text

    return pdf_text(path.read_bytes(), max_pages=10).encode()


TARGETS = [
    "mime",
    "bodystructure",
    "pdf-check",
    "offline",
    "einvoice-xml",
    "einvoice-values",
    "einvoice-pdf",
    "links",
]


def _run(name: str, runs: int, mutators: dict[str, tuple[Target, Mutator]], tmp: Path) -> None:
    target, mutator = mutators[name]
    start = time.perf_counter()
    slowest = fuzz(name, target, mutator, runs, tmp)
    total = time.perf_counter() - start
    print(f"fuzz {name}: {runs} inputs in {total:.1f} s, slowest {slowest:.2f} s")


@pytest.mark.parametrize("name", TARGETS)
def test_fuzz_target(
    name: str, mutators: dict[str, tuple[Target, Mutator]], tmp_path: Path
) -> None:
    """A few hundred mutated inputs: only project errors escape, none takes over 5 s."""
    _run(name, RUNS, mutators, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", TARGETS)
def test_fuzz_target_long(
    name: str, mutators: dict[str, tuple[Target, Mutator]], tmp_path: Path
) -> None:
    """SLOW_RUNS mutated inputs per target, the same checks."""
    _run(name, SLOW_RUNS, mutators, tmp_path)


def _pdfium_inputs(mutator: Mutator, runs: int) -> list[bytes]:
    """The mutations pypdf accepts: the only ones ``pdf_text`` ever hands to PDFium."""
    accepted = []
    for run in range(runs):
        data = mutator.input("pdfium", run)
        try:
            open_pdf(data)
        except InvoiceSyncError:
            continue
        accepted.append(data)
    return accepted


def test_fuzz_pdfium_text(mutators: dict[str, tuple[Target, Mutator]], tmp_path: Path) -> None:
    """Mutated PDFs that pass pypdf's check go through PDFium in a child process."""
    inputs = _pdfium_inputs(mutators["pdf-check"][1], RUNS)
    report = pdfium_in_child(inputs, tmp_path)
    assert report["runs"] == len(inputs) > 0
    print(f"fuzz pdfium: {len(inputs)} of {RUNS} inputs, slowest {report['slowest']:.2f} s")


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_fuzz_pdfium_text_long(mutators: dict[str, tuple[Target, Mutator]], tmp_path: Path) -> None:
    """SLOW_RUNS mutations through pypdf's check, the accepted ones through PDFium."""
    inputs = _pdfium_inputs(mutators["pdf-check"][1], SLOW_RUNS)
    report = pdfium_in_child(inputs, tmp_path)
    assert report["runs"] == len(inputs) > 0
    print(f"fuzz pdfium: {len(inputs)} of {SLOW_RUNS} inputs, slowest {report['slowest']:.2f} s")
