"""Hostile files made on the fly: PDFs that hang or balloon whatever parses them."""

from __future__ import annotations

import zlib

from tests.pdfs import pdf_of

__all__ = ["fanout_pdf", "flate_bomb_pdf"]


def _pdf(objects: list[bytes]) -> bytes:
    return pdf_of(objects, version=b"1.5")


def _stream(data: bytes, extra: bytes = b"", *, compress: bool = True) -> bytes:
    body = zlib.compress(data, 9) if compress else data
    flate = b" /Filter /FlateDecode" if compress else b""
    return b"<< /Length %d%s %s >>\nstream\n" % (len(body), flate, extra) + body + b"\nendstream"


def fanout_pdf(
    *, levels: int = 5, fanout: int = 10, operators: int = 1_000_000, leaf: bytes = b"q Q "
) -> bytes:
    """One page drawing a form XObject that draws the next ``fanout`` times, ``levels`` deep.

    The last form holds ``operators`` copies of ``leaf``: about fanout**levels * operators
    operations for whatever walks the page (10^10 with the defaults), in a file of ~6 KB.
    The default leaf (save and restore the graphics state) builds nothing, so the walk
    hangs in constant memory; a path leaf (``b"0 0 m 1 1 l "``) grows ~170 MB/s in PDFium.
    """
    # 1 catalog, 2 pages, 3 page, 4 page content, 5.. the forms (5 = level 0).
    forms = list(range(5, 5 + levels))
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /XObject << /X0 5 0 R >> >> >>",
        _stream(b"q /X0 Do Q\n", compress=False),
    ]
    for index, _ in enumerate(forms):
        head = b"/Type /XObject /Subtype /Form /BBox [0 0 595 842]"
        if index + 1 < levels:
            draw = b"q /Xn Do Q\n" * fanout
            resources = b" /Resources << /XObject << /Xn %d 0 R >> >>" % forms[index + 1]
            objects.append(_stream(draw, head + resources, compress=False))
        else:
            objects.append(_stream(leaf * operators + b"\n", head))
    return _pdf(objects)


def flate_bomb_pdf(*, gigabytes: float = 2.0) -> bytes:
    """One page whose content stream inflates to ``gigabytes`` GB of spaces (~2 MB per GB)."""
    compressor = zlib.compressobj(9)
    chunk = b" " * (16 << 20)
    parts = [compressor.compress(chunk) for _ in range(int(gigabytes * 1024 / 16))]
    parts.append(compressor.flush())
    body = b"".join(parts)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(body) + body + b"\nendstream",
    ]
    return _pdf(objects)
