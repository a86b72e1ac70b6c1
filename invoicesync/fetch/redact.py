"""URLs made safe to show: a module of its own so that callers need not import requests."""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["redact_url"]


def redact_url(url: str) -> str:
    """``url`` without userinfo, query string and fragment, safe for messages and logs.

    Scheme, host, port and path are kept; a dropped query or fragment shows as
    ``?…`` / ``#…``: ``https://user:pw@host/p?token=x`` → ``https://host/p?…``.
    A URL too broken to parse gives ``"<unparseable url>"``.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # bad IPv6 literal or port
        return "<unparseable url>"
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal needs its brackets back
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    redacted = f"{parts.scheme}://{host}{parts.path}" if parts.scheme else f"{host}{parts.path}"
    if parts.query:
        redacted += "?…"
    if parts.fragment:
        redacted += "#…"
    return redacted
