"""The SSRF guard's pure parts: the address classifier (on any literal: nothing connects)
and URL checks with DNS replaced by a table (so no name is ever looked up or contacted)."""

from __future__ import annotations

import pytest

from tasks.core.safe_http import (
    DNS_ERROR,
    INVALID_URL,
    SSRF_REFUSED,
    UNSUPPORTED_SCHEME,
    address_kind,
    check_url,
    is_public_address,
    static_refusal,
)

NOT_PUBLIC = {
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "::1": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "fc00::1": "private",
    "169.254.169.254": "link-local",  # cloud metadata service
    "fe80::1%eth0": "link-local",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "224.0.0.1": "multicast",
    "100.64.0.1": "non-global",  # carrier-grade NAT
    "::ffff:127.0.0.1": "loopback",  # IPv4-mapped
    "2002:7f00:1::": "loopback",  # 6to4 around 127.0.0.1
    "64:ff9b::a00:1": "private",  # NAT64 around 10.0.0.1
}


@pytest.mark.parametrize("ip,kind", sorted(NOT_PUBLIC.items()))
def test_non_public_addresses_are_refused(ip: str, kind: str) -> None:
    assert address_kind(ip) == kind
    assert not is_public_address(ip)


@pytest.mark.parametrize("ip", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"])
def test_public_addresses_pass(ip: str) -> None:
    assert is_public_address(ip)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://localhost:8080/x",
        "http://app.localhost/",
        "http://[::1]:9000/",
        "http://2130706433/",  # 127.0.0.1 as one decimal number
        "http://0x7f.1/",  # 127.0.0.1 in hex shorthand
        "http://127.1/",
        "https://169.254.169.254/latest/meta-data/",
    ],
)
def test_loopback_and_private_literals_refused_without_dns(url: str) -> None:
    def no_dns(host: str) -> list[str]:
        raise AssertionError(f"looked up {host}")

    refusal = static_refusal(url, allow_private=False)
    assert refusal is not None and refusal.reason == SSRF_REFUSED, refusal
    assert check_url(url, allow_private=False, resolve=no_dns) == SSRF_REFUSED
    assert check_url(url, allow_private=True, resolve=no_dns) is None


def test_names_resolving_to_loopback_are_refused() -> None:
    table = {"intranet.example": ["127.0.0.1"], "mixed.example": ["8.8.8.8", "10.0.0.5"]}

    def resolve(host: str) -> list[str]:
        if host not in table:
            raise OSError(f"{host}: no such name")
        return table[host]

    assert check_url("http://intranet.example/", False, resolve=resolve) == SSRF_REFUSED
    # One private address among public ones is enough to refuse.
    assert check_url("http://mixed.example/", False, resolve=resolve) == SSRF_REFUSED
    assert check_url("http://unknown.example/", False, resolve=resolve) == DNS_ERROR
    assert check_url("http://intranet.example/", True, resolve=resolve) is None


def test_public_name_passes_and_exemptions_are_exact() -> None:
    def resolve(host: str) -> list[str]:
        return {"shop.example": ["93.184.216.34"], "mirror.internal": ["10.0.0.7"]}[host]

    assert check_url("https://shop.example/a.png", False, resolve=resolve) is None
    exempt = ["mirror.internal:8080", "127.0.0.1:5000"]
    assert check_url("http://mirror.internal:8080/x", False, exempt, resolve) is None
    assert check_url("http://mirror.internal:8081/x", False, exempt, resolve) == SSRF_REFUSED
    assert check_url("http://127.0.0.1:5000/", False, exempt, resolve) is None
    assert check_url("http://localhost:5000/", False, exempt, resolve) == SSRF_REFUSED


@pytest.mark.parametrize(
    "url,reason",
    [
        ("ftp://127.0.0.1/file", UNSUPPORTED_SCHEME),
        ("file:///etc/passwd", UNSUPPORTED_SCHEME),
        ("javascript:alert(1)", UNSUPPORTED_SCHEME),
        ("http:///no-host", INVALID_URL),
        ("http://[::1/", INVALID_URL),
    ],
)
def test_unusable_urls_named(url: str, reason: str) -> None:
    assert check_url(url, allow_private=True) == reason
