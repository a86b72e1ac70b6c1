"""Which links in a mail body are worth downloading, best first.

Sans-I/O: ``rank_links`` only looks at the URL text (and the link's visible text,
when the caller has it). A mail typically holds a dozen links (logo, social
profiles, unsubscribe, tracking pixel, support page) and one "download your
invoice" link: that one is tried first, the noise never.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

__all__ = ["rank_links"]

# Words that name an invoice or its download in the languages our vendors write in.
_INVOICE_WORDS = (
    "invoice",
    "rechnung",
    "facture",
    "factura",
    "fattura",
    "factuur",
    "faktura",
    "download",
    "bill",
    "receipt",
    "beleg",
    "quittung",
    "recibo",
    "ricevuta",
    "document",
    "statement",
)
_UNSUBSCRIBE_WORDS = (
    "unsubscribe",
    "optout",
    "opt-out",
    "opt_out",
    "abmelden",
    "abbestellen",
    "desabonn",
    "désabonn",
    "desinscri",
    "désinscri",
    "uitschrijven",
    "afmelden",
    "darse-de-baja",
    "disiscri",
    "email-preferences",
    "manage-preferences",
)
_SOCIAL_DOMAINS = (
    "facebook.com",
    "fb.com",
    "fb.me",
    "twitter.com",
    "x.com",
    "t.co",
    "linkedin.com",
    "lnkd.in",
    "instagram.com",
    "youtube.com",
    "youtu.be",
    "tiktok.com",
    "pinterest.com",
    "xing.com",
)
_IMAGE_SUFFIXES = (".png", ".gif", ".jpg", ".jpeg", ".webp", ".svg", ".bmp", ".ico", ".tif")
# Open-tracking pixels and beacons: their names, as a whole path segment or file stem.
_TRACKER = re.compile(r"(?:^|[/_.-])(?:pixel|beacon|spacer|open\.aspx|trk_?open)(?:$|[/_.-])")

_PDF_PATH = 100
_PDF_ELSEWHERE = 20
_WORD = 10


def rank_links(links: list[str], *, context: dict[str, str] | None = None, limit: int) -> list[str]:
    """The at most ``limit`` links worth trying, most promising first.

    ``context`` maps a link to its visible text, when known. A path ending in
    ``.pdf`` ranks highest, then links whose URL or text names an invoice or a
    download (invoice, rechnung, facture, factura, fattura, factuur, bill, receipt,
    beleg …); other http(s) links follow in mail order. Dropped: anything that is
    not http(s) (mailto …), unsubscribe links, images and tracking pixels, social
    networks, and duplicates. Never raises, whatever the strings.
    """
    if limit <= 0:
        return []
    texts = context or {}
    scored: dict[str, int] = {}
    for link in links:
        if link in scored:
            continue
        score = _score(link, texts.get(link, ""))
        if score is not None:
            scored[link] = score
    # sorted() is stable: equal scores keep the order of the mail.
    return sorted(scored, key=lambda link: -scored[link])[:limit]


def _score(link: str, text: str) -> int | None:
    """How promising ``link`` is, or ``None`` if it is to be dropped."""
    try:
        parts = urlsplit(link.strip())
        host = (parts.hostname or "").rstrip(".")
    except ValueError:  # a broken IPv6 literal, a netloc that changes under NFKC …
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    path = unquote(parts.path).lower()
    words = f"{path} {unquote(parts.query).lower()} {text.lower()}"
    if any(host == domain or host.endswith("." + domain) for domain in _SOCIAL_DOMAINS):
        return None
    if any(word in words for word in _UNSUBSCRIBE_WORDS) or "unsubscribe" in host:
        return None
    if path.endswith(_IMAGE_SUFFIXES) or _TRACKER.search(path):
        return None
    score = _PDF_PATH if path.rstrip("/").endswith(".pdf") else 0
    if not score and "pdf" in words:  # ?format=pdf, /pdf/123, "Download PDF"
        score = _PDF_ELSEWHERE
    return score + _WORD * sum(word in words for word in _INVOICE_WORDS)
