"""The SSRF guard: which destinations a crawler or downloader may connect to.

A production crawl follows URLs written by strangers, so a link, seed or redirect must not
make it reach internal services: private, loopback, link-local, shared, reserved and
multicast addresses are refused unless ``allow_private`` is set (the demo and the tests).

- ``is_public_address(ip)``: the pure classifier.
- ``check_url(url, allow_private)``: a reason code or None; resolves host names (blocking).
- ``static_refusal(url, allow_private)``: the checks that need no DNS (scheme, IP literals,
  legacy numeric IPv4 forms such as ``2130706433``); the async crawler pairs it with
- ``tasks.crawl.safe_resolver.GuardedResolver``: an aiohttp resolver that refuses names
  resolving to non-public addresses at connect time, so every connection, redirect hop
  included, is checked on the address actually used (no window for DNS rebinding between
  check and connect). It lives apart so that this module imports no aiohttp: every
  img2dataset worker process imports this one.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Collection
from typing import NamedTuple
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

SSRF_REFUSED = "ssrf_refused"
INVALID_URL = "invalid_url"
UNSUPPORTED_SCHEME = "unsupported_scheme"
DNS_ERROR = "dns_error"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refusal(NamedTuple):
    """Why a URL may not be fetched: a reason code (counted) and a detail (reported)."""

    reason: str
    detail: str


class AddressRefused(OSError):
    """Raised by GuardedResolver for a host that resolves to a non-public address."""


def parse_ip(ip: str | IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return ip
    return ipaddress.ip_address(ip.split("%", 1)[0].strip("[]"))  # drop an IPv6 zone id


def _embedded_ipv4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64), if any."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def address_kind(ip: str | IPAddress) -> str:
    """What an address is: "public", "loopback", "private", "link-local", "multicast", ..."""
    addr = parse_ip(ip)
    inner = _embedded_ipv4(addr)
    if inner is not None:
        return address_kind(inner)
    for kind, flag in (
        ("unspecified", addr.is_unspecified),
        ("loopback", addr.is_loopback),
        ("link-local", addr.is_link_local),
        ("multicast", addr.is_multicast),
        ("private", addr.is_private),
        ("reserved", addr.is_reserved),
    ):
        if flag:
            return kind
    return "public" if addr.is_global else "non-global"


def is_public_address(ip: str | IPAddress) -> bool:
    """True for a globally routable unicast address; False for private, loopback,
    link-local, shared (100.64/10), reserved, multicast and unspecified addresses, and for
    IPv6 forms that embed one of those (``::ffff:127.0.0.1``, 6to4, NAT64)."""
    return address_kind(ip) == "public"


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """``2130706433``, ``0x7f.1``, ``127.1``: forms inet_aton maps onto an address."""
    if not host or not all(c in "0123456789abcdefx." for c in host.lower()):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def host_port(url: str) -> tuple[str, int]:
    """The lower-cased host and the effective port of an http(s) URL."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    return (parts.hostname or "").lower(), port


def refuse_address(host: str, addr: IPAddress, allow_private: bool) -> Refusal | None:
    kind = address_kind(addr)
    if kind == "public" or allow_private:
        return None
    shown = host if host == str(addr) else f"{host} ({addr})"
    return Refusal(SSRF_REFUSED, f"{shown} is a {kind} address")


def static_refusal(url: str, allow_private: bool, exempt: Collection[str] = ()) -> Refusal | None:
    """The checks that need no DNS: a usable http(s) URL whose host, if it is an IP literal
    (any notation), is public. ``exempt`` holds "host:port" entries allowed regardless."""
    try:
        parts = urlsplit(url)
        host, port = host_port(url)
    except ValueError as e:
        return Refusal(INVALID_URL, f"{url!r}: {e}")
    if parts.scheme.lower() not in ("http", "https"):
        return Refusal(UNSUPPORTED_SCHEME, f"{url!r}: scheme {parts.scheme!r}")
    if not host:
        return Refusal(INVALID_URL, f"{url!r}: no host")
    if allow_private or f"{host}:{port}" in exempt:
        return None
    try:
        addr: IPAddress | None = parse_ip(host)
    except ValueError:
        addr = _legacy_ipv4(host)
    if addr is None:
        if host == "localhost" or host.endswith(".localhost"):
            return Refusal(SSRF_REFUSED, f"{host} is a loopback name")
        return None
    return refuse_address(host, addr, allow_private)


def resolve_host(host: str) -> list[str]:
    """Every address ``host`` resolves to (blocking getaddrinfo)."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def url_refusal(
    url: str,
    allow_private: bool,
    exempt: Collection[str] = (),
    resolve: Callable[[str], list[str]] = resolve_host,
) -> Refusal | None:
    """Full check of one URL, resolving its host name; every resolved address must pass."""
    refusal = static_refusal(url, allow_private, exempt)
    host, port = host_port(url) if refusal is None else ("", 0)
    if refusal is not None or allow_private or f"{host}:{port}" in exempt:
        return refusal
    try:
        parse_ip(host)
        return None  # an IP literal, already classified
    except ValueError:
        pass
    try:
        addresses = resolve(host)
    except OSError as e:
        return Refusal(DNS_ERROR, f"{host}: {e}")
    for address in addresses:
        refused = refuse_address(host, parse_ip(address), allow_private)
        if refused is not None:
            return refused
    return None


def check_url(
    url: str,
    allow_private: bool,
    exempt: Collection[str] = (),
    resolve: Callable[[str], list[str]] = resolve_host,
) -> str | None:
    """The reason code a URL may not be fetched (``ssrf_refused``, ``invalid_url``,
    ``unsupported_scheme``, ``dns_error``), or None when it may."""
    refusal = url_refusal(url, allow_private, exempt, resolve)
    if refusal is not None:
        log.debug("refused %s: %s", url, refusal.detail)
    return None if refusal is None else refusal.reason
