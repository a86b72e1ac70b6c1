"""The address guard: which hosts and addresses a link download may connect to."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from invoicesync.errors import BadInputError, InvoiceSyncError, NetworkError
from invoicesync.fetch.guard import AddressRefusedError, check_address, check_host

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """A fake resolver: names map to address lists; anything else does not exist."""
    table: dict[str, list[str]] = {}

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        host = host.removesuffix(".")  # a fully qualified name, as the resolver reads it
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                socket.AF_INET6 if ":" in address else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (address, 0, 0, 0) if ":" in address else (address, 0),
            )
            for address in table[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


@pytest.fixture
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any resolver call fails the test: literals must be judged without one."""

    def getaddrinfo(*args: Any, **kwargs: Any) -> list[Any]:
        raise AssertionError(f"resolver called with {args}")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "refused: 127.0.0.1 is loopback"),
        ("127.255.0.9", "is loopback"),
        ("10.0.0.1", "refused: 10.0.0.1 is private"),
        ("172.16.5.4", "is private"),
        ("192.168.1.1", "is private"),
        ("169.254.169.254", "refused: 169.254.169.254 is the cloud metadata address"),
        ("169.254.1.1", "is link-local"),
        ("0.0.0.0", "is unspecified"),
        ("224.0.0.251", "is multicast"),
        ("240.0.0.1", "is private"),  # "reserved" too; Python files 240/4 under both
        ("100.64.0.1", "is not globally routable"),
        ("::1", "refused: ::1 is loopback"),
        ("[::1]", "refused: ::1 is loopback"),
        ("::", "is unspecified"),
        ("fe80::1", "is link-local"),
        ("fc00::1", "is private"),
        ("fd00:ec2::254", "is the cloud metadata address"),
        ("ff02::1", "is multicast"),
        ("::ffff:127.0.0.1", "the IPv4-mapped form of 127.0.0.1, which is loopback"),
        ("::ffff:a9fe:a9fe", "the IPv4-mapped form of 169.254.169.254, which is the cloud"),
        ("::127.0.0.1", "the IPv4-compatible form of 127.0.0.1, which is loopback"),
        ("2002:a00:1::", "the 6to4 form of 10.0.0.1, which is private"),
        ("64:ff9b::7f00:1", "the NAT64 form of 127.0.0.1, which is loopback"),
        ("2130706433", "2130706433 is a non-canonical IPv4 address (127.0.0.1)"),
        ("0x7f000001", "non-canonical IPv4 address (127.0.0.1)"),
        ("0X7F.1", "non-canonical IPv4 address (127.0.0.1)"),
        ("0177.0.0.1", "non-canonical IPv4 address (127.0.0.1)"),
        ("127.1", "non-canonical IPv4 address (127.0.0.1)"),
        ("127.0.1", "non-canonical IPv4 address (127.0.0.1)"),
        ("127.000.000.001", "non-canonical IPv4 address (127.0.0.1)"),
        ("10.1", "non-canonical IPv4 address (10.0.0.1)"),
        ("127.0.0.1.", "non-canonical IPv4 address (127.0.0.1)"),
        ("08.0.0.1", "not a valid IPv4 address"),  # 08 is neither octal nor decimal
        ("256.0.0.1", "not a valid IPv4 address"),
        ("1.2.3.4.5", "not a valid IPv4 address"),
        ("4294967296", "not a valid IPv4 address"),
        ("example.123", "not a valid IPv4 address"),
        ("::ffff:zz", "not a valid IPv6 address"),
        ("", "not a usable host"),
    ],
)
def test_internal_and_obfuscated_literals_are_refused(no_dns: None, host: str, reason: str) -> None:
    """Every internal address and every odd IPv4 spelling is refused, without a DNS lookup."""
    with pytest.raises(AddressRefusedError) as caught:
        check_host(host, [])
    assert reason in str(caught.value)
    assert caught.value.kind == "refused" and isinstance(caught.value, BadInputError)


@pytest.mark.parametrize("host", [PUBLIC_V4, PUBLIC_V6, f"[{PUBLIC_V6}]", "2002:5db8:d70e::1"])
def test_public_literals_pass(no_dns: None, host: str) -> None:
    """A public address given literally is returned as is, without a DNS lookup."""
    assert check_host(host, []) == [ipaddress.ip_address(host.strip("[]"))]


def test_obfuscated_public_literal_is_refused_too(no_dns: None) -> None:
    """A non-canonical spelling is refused even when the address it means is public."""
    with pytest.raises(AddressRefusedError, match=r"non-canonical IPv4 address \(8\.8\.8\.8\)"):
        check_host("0x08080808", [])


def test_name_with_public_addresses_passes(dns: dict[str, list[str]]) -> None:
    """A name's addresses are returned in resolver order, each once."""
    dns["invoices.vendor-billing.eu"] = [PUBLIC_V6, PUBLIC_V4, PUBLIC_V4]
    assert check_host("Invoices.Vendor-Billing.EU", []) == [
        ipaddress.ip_address(PUBLIC_V6),
        ipaddress.ip_address(PUBLIC_V4),
    ]


@pytest.mark.parametrize(
    ("addresses", "reason"),
    [
        (["127.0.0.1"], "rebind.vendor-billing.eu resolves to 127.0.0.1, which is loopback"),
        (
            [PUBLIC_V4, "10.1.2.3"],
            "rebind.vendor-billing.eu resolves to 10.1.2.3, which is private",
        ),
        ([PUBLIC_V4, "::ffff:192.168.0.1"], "IPv4-mapped form of 192.168.0.1"),
        (["169.254.169.254"], "which is the cloud metadata address"),
    ],
)
def test_name_with_any_internal_address_is_refused(
    dns: dict[str, list[str]], addresses: list[str], reason: str
) -> None:
    """One internal address among a name's addresses refuses the whole name."""
    dns["rebind.vendor-billing.eu"] = addresses
    with pytest.raises(AddressRefusedError) as caught:
        check_host("rebind.vendor-billing.eu", [])
    assert reason in str(caught.value)


def test_unknown_name_is_bad_input_not_refused(dns: dict[str, list[str]]) -> None:
    """A name that does not exist is BadInputError, but not an address refusal."""
    with pytest.raises(BadInputError, match="not found") as caught:
        check_host("no-such-host.vendor-billing.eu", [])
    assert not isinstance(caught.value, AddressRefusedError)


def test_resolver_trouble_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    """A temporary resolver failure is a NetworkError: the link may work later."""

    def getaddrinfo(*args: Any, **kwargs: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(NetworkError, match=r"cannot resolve vendor-billing\.eu"):
        check_host("vendor-billing.eu", [])


def test_invalid_host_name_is_bad_input() -> None:
    """A name the resolver cannot even encode is BadInputError."""
    with pytest.raises(BadInputError, match="not a valid host name"):
        check_host("a..b", [])


# --------------------------------------------------------------------- allow


def test_cidr_opens_exactly_its_addresses(no_dns: None) -> None:
    """127.0.0.1/32 allows 127.0.0.1 (and its mapped form), not 127.0.0.2."""
    allow = ["127.0.0.1/32"]
    assert check_host("127.0.0.1", allow) == [ipaddress.ip_address("127.0.0.1")]
    assert check_host("[::ffff:127.0.0.1]", allow) == [ipaddress.ip_address("::ffff:7f00:1")]
    with pytest.raises(AddressRefusedError, match=r"127\.0\.0\.2 is loopback"):
        check_host("127.0.0.2", allow)


def test_cidr_opens_private_ranges_and_names_in_them(dns: dict[str, list[str]]) -> None:
    """A private range on the allow-list covers literals and names resolving into it."""
    dns["erp.intranet"] = ["10.1.2.3"]
    allow = [" 10.1.0.0/16 ", "fd12::/16"]
    assert check_host("erp.intranet", allow) == [ipaddress.ip_address("10.1.2.3")]
    assert check_host("fd12::5", allow) == [ipaddress.ip_address("fd12::5")]
    with pytest.raises(AddressRefusedError):
        check_host("10.2.0.1", allow)


def test_host_name_entry_is_exact_and_case_insensitive(dns: dict[str, list[str]]) -> None:
    """A name entry allows that name's addresses, not those of a sub- or sibling domain."""
    dns["erp.intranet"] = ["10.1.2.3", "::1"]
    dns["x.erp.intranet"] = ["10.1.2.4"]
    assert len(check_host("ERP.intranet.", ["erp.INTRANET"])) == 2
    with pytest.raises(AddressRefusedError):
        check_host("x.erp.intranet", ["erp.intranet"])


def test_host_name_entry_never_opens_the_metadata_address(dns: dict[str, list[str]]) -> None:
    """Only an explicit CIDR opens 169.254.169.254, not a name that resolves to it."""
    dns["metadata.google.internal"] = ["169.254.169.254"]
    with pytest.raises(AddressRefusedError, match="cloud metadata"):
        check_host("metadata.google.internal", ["metadata.google.internal"])
    assert check_host(
        "metadata.google.internal", ["metadata.google.internal", "169.254.169.254/32"]
    )


def test_check_address_names_the_host(no_dns: None) -> None:
    """The peer check says which name led to the address."""
    with pytest.raises(AddressRefusedError, match=r"vendor-billing\.eu resolves to 10\.0\.0\.7"):
        check_address("10.0.0.7", [], host="vendor-billing.eu")
    assert check_address(PUBLIC_V4, [], host="vendor-billing.eu") == ipaddress.ip_address(PUBLIC_V4)
    with pytest.raises(AddressRefusedError, match="not an IP address"):
        check_address("vendor-billing.eu", [])


# ---------------------------------------------------------------- properties


def _spellings(number: int) -> list[str]:
    """inet_aton spellings of one 32-bit number other than the dotted quad."""
    quad = number.to_bytes(4, "big")
    return [
        str(number),
        hex(number),
        oct(number).replace("0o", "0"),
        f"{quad[0]}.{int.from_bytes(quad[1:], 'big')}",
        f"{quad[0]}.{quad[1]}.{int.from_bytes(quad[2:], 'big')}",
        ".".join(hex(part) for part in quad),
    ]


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_odd_ipv4_spelling_is_refused(number: int) -> None:
    """Decimal, hex, octal and short forms of any IPv4 address never pass."""
    expected = re.escape(f"non-canonical IPv4 address ({ipaddress.IPv4Address(number)})")
    for spelling in _spellings(number):
        with pytest.raises(AddressRefusedError, match=expected):
            check_host(spelling, ["0.0.0.0/0"])


def _nxdomain(host: str, *args: Any, **kwargs: Any) -> list[Any]:
    host.encode("idna")  # what the real resolver does first, with the same failures
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@given(st.text(max_size=300))
def test_any_text_is_judged_without_surprises(text: str) -> None:
    """Whatever the host text, the guard returns addresses or raises one of our errors."""
    with (
        mock.patch.object(socket, "getaddrinfo", _nxdomain),
        contextlib.suppress(InvoiceSyncError),  # anything else fails the test
    ):
        check_host(text, ["127.0.0.1/32", "Example.Invalid"])


@pytest.mark.parametrize(
    "host",
    [
        "billing.example.com",
        "example.org",
        "a.b.test",
        "printer.local",
        "x.invalid",
        "localhost",
        "svc.internal",
        "EXAMPLE.NET.",
    ],
)
def test_special_use_names_are_refused_without_dns(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reserved names never reach the resolver: refused at once."""

    def no_dns(*args: object, **kwargs: object) -> list[object]:
        raise AssertionError("DNS was asked")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(AddressRefusedError, match="special-use domain"):
        check_host(host, [])
