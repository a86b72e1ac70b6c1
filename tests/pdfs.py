"""Minimal PDFs made on the fly, for tests and benchmarks."""

from __future__ import annotations

__all__ = ["text_pdf"]


def text_pdf(*pages: list[str]) -> bytes:
    """A minimal PDF with one Helvetica text line per string, one page per list."""
    fonts = 3 + 2 * len(pages)
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    for index, lines in enumerate(pages):
        page, content = 3 + 2 * index, 4 + 2 * index
        kids.append(f"{page} 0 R")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents {content} 0 R "
            f"/Resources << /Font << /F1 {fonts} 0 R >> >> >>".encode()
        )
        ops = "".join(
            f"BT /F1 11 Tf 50 {800 - 16 * n} Td ({line}) Tj ET\n" for n, line in enumerate(lines)
        ).encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(ops) + ops + b"\nendstream")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>".encode()
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    return pdf_of(objects, version=b"1.4")


def pdf_of(objects: list[bytes], *, version: bytes = b"1.7") -> bytes:
    """A PDF of ``objects`` (object 1 the catalog), with a correct xref table."""
    out, offsets = bytearray(b"%%PDF-%s\n" % version), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    trailer = b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n"
    return bytes(out + trailer % (len(objects) + 1, xref))
