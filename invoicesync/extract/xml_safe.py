"""The one place where untrusted XML is parsed.

Uses lxml with a hardened parser rather than defusedxml: lxml is already a
dependency (via factur-x) and ``defusedxml.lxml`` is deprecated upstream.

Defence in depth: the raw bytes are refused if they contain a DOCTYPE or ENTITY
declaration (in UTF-8/ASCII or UTF-16/32); the parser never resolves entities,
loads DTDs or touches the network; and the parsed tree is refused again if a DTD
or an entity reference survived. DTD, entity, size and depth refusals raise
``UnsafeXmlError``; XML that is merely malformed raises ``BadInputError``.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from invoicesync.errors import BadInputError, UnsafeXmlError

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_DEPTH", "parse_xml"]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_DEPTH = 100

_STAGE = "extract"
_MARKERS = ("<!DOCTYPE", "<!ENTITY")
_WIDE_ENCODINGS = ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
# libxml2 messages that mean "limit hit" rather than "broken document".
_LIMIT_HINTS = ("excessive depth", "amplification", "loop", "xml_parse_huge")


def parse_xml(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> etree._Element:
    """Parse untrusted XML bytes and return the root element.

    ``max_bytes`` bounds the input size, ``max_depth`` the element nesting (the
    root element has depth 1).
    """
    if len(data) > max_bytes:
        raise UnsafeXmlError(
            f"XML too large: {len(data)} bytes exceeds the limit of {max_bytes}", stage=_STAGE
        )
    _refuse_declarations(data)
    root = _parse(data)
    _check_depth(root, max_depth)
    return root


def _refuse_declarations(data: bytes) -> None:
    for marker in _MARKERS:
        encoded = [marker.encode("ascii"), *(marker.encode(enc) for enc in _WIDE_ENCODINGS)]
        if any(form in data for form in encoded):
            raise UnsafeXmlError(
                f"XML with a {marker[2:]} declaration refused (DTDs and entities are not allowed)",
                stage=_STAGE,
            )


def _parser() -> etree.XMLParser:
    # A fresh parser per call: lxml parsers are not safe to share between threads.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_pis=True,
    )


def _parse(data: bytes) -> etree._Element:
    """Parse with the hardened parser and refuse any DTD or entity that got through."""
    try:
        root = etree.fromstring(data, _parser())
    except etree.LxmlError as exc:
        reason = str(exc)
        if any(hint in reason.lower() for hint in _LIMIT_HINTS):
            raise UnsafeXmlError(f"XML refused by parser limits: {reason}", stage=_STAGE) from exc
        raise BadInputError(f"malformed XML: {reason}", stage=_STAGE) from exc
    except ValueError as exc:  # lxml raises ValueError for some unusable inputs
        raise BadInputError(f"malformed XML: {exc}", stage=_STAGE) from exc
    docinfo: Any = root.getroottree().docinfo  # lxml-stubs lack DocInfo.doctype
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise UnsafeXmlError("XML with a DTD refused", stage=_STAGE)
    if next(root.iter(etree.Entity), None) is not None:
        raise UnsafeXmlError("XML with entity references refused", stage=_STAGE)
    return root


def _check_depth(root: etree._Element, max_depth: int) -> None:
    # Iterative walk: recursion on hostile input is exactly what we must avoid.
    stack: list[tuple[etree._Element, int]] = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        if depth > max_depth:
            raise UnsafeXmlError(
                f"XML nested deeper than the limit of {max_depth} elements", stage=_STAGE
            )
        stack.extend((child, depth + 1) for child in element)
