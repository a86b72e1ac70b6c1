"""Which network addresses a link download may connect to (protection against SSRF).

A link in a mail body is chosen by whoever wrote the mail. Followed naively it makes
us request internal services on the attacker's behalf: the cloud metadata endpoint,
an admin page on localhost, a database on the office network. So every address is
vetted before a connection is made, and again after (see ``fetch/http.py``).

An address is refused when it is loopback, private (RFC 1918, IPv6 ULA), link-local,
multicast, reserved, unspecified, otherwise not globally routable (e.g. the shared
100.64.0.0/10), or a cloud metadata address. IPv6 forms that carry an IPv4 address
(mapped, compatible, 6to4, Teredo, NAT64) are judged by that IPv4 address too.

Names under special-use domains (``example.com``, ``.test``, ``.invalid``,
``localhost``, ``.local``, ``.internal`` …) are refused without asking DNS.

A *host* is refused when ANY of its addresses is refused: a name that mixes public
and internal addresses is either a rebinding trick or a misconfiguration.

IPv4 literals in the forms ``inet_aton`` and URL parsers accept besides the dotted
quad (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``) are refused outright,
whatever address they denote: no genuine invoice link uses them, and they exist to
slip past naive filters.

``allow`` opens exceptions: a CIDR (``10.1.0.0/16``, ``127.0.0.1/32``) accepts the
addresses in it; a host name (exact, case-insensitive) accepts every address that
name resolves to, except the cloud metadata addresses, which only a CIDR can open.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence

from invoicesync.errors import BadInputError, NetworkError

__all__ = ["AddressRefusedError", "IPAddress", "check_address", "check_host"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_STAGE = "fetch"
_METADATA = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
# WHATWG URL parsing treats a host whose last label is a number as an IPv4 address.
_NUMBER = re.compile(r"[0-9]+|0x[0-9a-f]*", re.IGNORECASE)
_MAX_HOST = 253
_SPECIAL_USE = (
    "example",
    "example.com",
    "example.net",
    "example.org",
    "invalid",
    "test",
    "localhost",
    "local",
    "internal",
    "home.arpa",
    "onion",
)


class AddressRefusedError(BadInputError):
    """The link points at an address the policy forbids; no connection was (or stays) open."""

    kind = "refused"


def check_host(host: str, allow: Sequence[str]) -> list[IPAddress]:
    """Resolve ``host`` and return its addresses, or raise if any of them is refused.

    ``host`` is a name or an IP literal (brackets around IPv6 allowed). Raises
    ``AddressRefusedError`` for a refused address or a non-canonical IPv4 literal,
    ``BadInputError`` for a name that does not exist or cannot be one, and
    ``NetworkError`` when the resolver fails for another (maybe passing) reason.
    """
    name = host.strip().removeprefix("[").removesuffix("]").lower()
    if not name or len(name) > _MAX_HOST:
        raise AddressRefusedError(f"refused: {host[:80]!r} is not a usable host", stage=_STAGE)
    literal = _ip_literal(name)
    if literal is not None:
        return [check_address(literal, allow)]
    if ":" in name:
        raise AddressRefusedError(f"refused: {name!r} is not a valid IPv6 address", stage=_STAGE)
    if _NUMBER.fullmatch(name.removesuffix(".").rsplit(".", 1)[-1]):
        loose = _loose_ipv4(name.removesuffix("."))
        if loose is None:
            raise AddressRefusedError(f"refused: {name} is not a valid IPv4 address", stage=_STAGE)
        raise AddressRefusedError(
            f"refused: {name} is a non-canonical IPv4 address ({loose})", stage=_STAGE
        )
    bare = name.removesuffix(".")
    special = next((d for d in _SPECIAL_USE if bare == d or bare.endswith("." + d)), None)
    if special is not None and bare not in {a.lower() for a in allow}:
        # Never even asked to DNS: these names have no public meaning (RFC 2606, 6761, 6762).
        raise AddressRefusedError(
            f"refused: {bare} is under the special-use domain {special}", stage=_STAGE
        )
    addresses = _resolve(name)
    for address in addresses:
        check_address(address, allow, host=name)
    return addresses


def check_address(
    address: str | IPAddress, allow: Sequence[str], *, host: str | None = None
) -> IPAddress:
    """Return ``address`` as an ``ip_address`` if the policy accepts it, else raise.

    ``host`` is the name the address was reached by: it may match a host-name entry
    of ``allow``, and it makes the refusal message say where the address came from.
    """
    ip = address if not isinstance(address, str) else _ip_literal(address.lower())
    if ip is None:
        raise AddressRefusedError(f"refused: {address!r} is not an IP address", stage=_STAGE)
    if _allowed(ip, allow, host):
        return ip
    what = _refusal(ip)
    if what is None:
        return ip
    if host is None or _ip_literal(host) == ip:
        raise AddressRefusedError(f"refused: {ip} is {what}", stage=_STAGE)
    raise AddressRefusedError(f"refused: {host} resolves to {ip}, which is {what}", stage=_STAGE)


def _refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be contacted, or ``None`` if it is a public address."""
    if ip in _METADATA:
        return "the cloud metadata address"
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        form, inner = embedded
        why = _refusal(inner)
        if why is not None:
            return f"the {form} form of {inner}, which is {why}"
    for what, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    ):
        if flag:
            return what
    return None


def _embedded_ipv4(ip: IPAddress) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address stands for, with the name of the form."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    value = int(ip)
    if value >> 32 == 0 and value > 1:  # ::a.b.c.d, deprecated but still routed by some stacks
        return "IPv4-compatible", ipaddress.IPv4Address(value)
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    if ip.teredo is not None:
        return "Teredo", ip.teredo[1]
    if any(ip in network for network in _NAT64):
        return "NAT64", ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return None


def _allowed(ip: IPAddress, allow: Sequence[str], host: str | None) -> bool:
    # A mapped address reaches the IPv4 host it embeds: an IPv4 CIDR covers it.
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    name = (host or "").lower().removesuffix(".")
    for entry in allow:
        entry = entry.strip()
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if name and entry.lower().removesuffix(".") == name and ip not in _METADATA:
                return True
            continue
        if any(c.version == network.version and c in network for c in candidates):
            return True
    return False


def _ip_literal(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _loose_ipv4(name: str) -> ipaddress.IPv4Address | None:
    """``name`` read as ``inet_aton`` does: 1-4 parts, decimal, octal (0…) or hex (0x…)."""
    parts = name.split(".")
    if len(parts) > 4 or not all(_NUMBER.fullmatch(part) for part in parts):
        return None
    values: list[int] = []
    for part in parts:
        if part[:2].lower() == "0x":
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if not set(part) <= set("01234567"):
                return None
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *head, last = values
    # The last part fills all the bytes the earlier parts left: 127.1 is 127.0.0.1.
    if any(value > 255 for value in head) or last >= 256 ** (4 - len(head)):
        return None
    number = sum(value << (8 * (3 - index)) for index, value in enumerate(head)) + last
    return ipaddress.IPv4Address(number)


def _resolve(name: str) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            raise BadInputError(f"host {name} not found", stage=_STAGE) from exc
        raise NetworkError(f"cannot resolve {name}: {exc.strerror}", stage=_STAGE) from exc
    except ValueError as exc:  # UnicodeError when not encodable as IDNA, a NUL byte …
        raise BadInputError(f"{name[:80]!r} is not a valid host name", stage=_STAGE) from exc
    addresses: dict[IPAddress, None] = {}  # an ordered set: the resolver's order is kept
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            ip = _ip_literal(str(sockaddr[0]))
            if ip is not None:
                addresses.setdefault(ip, None)
    if not addresses:
        raise BadInputError(f"host {name} has no IP address", stage=_STAGE)
    return list(addresses)
