"""HTTP GET that connects only to the address it checked, within one deadline.

urllib resolves a host itself when it connects, after any check of ours has resolved it
once: a name that answers with a public address to the check and with an internal one to
the connect (DNS rebinding) reaches the internal one. It also gives each step (DNS,
connect, every header line, every redirect hop) a fresh timeout, so a server that drips one
byte just inside the timeout holds a fetch for ever. ``get`` closes both holes:

- **Pinned connections.** Each hop's host is resolved once (``resolve``, with a timeout),
  every address it returns is checked against the SSRF policy, and the socket connects to
  one of those checked addresses. The request keeps the URL's Host header and TLS SNI.
  Proxy environment variables are never consulted (``http.client`` has no proxy support).
- **One deadline** covers DNS, connect, headers, body and every redirect hop. Each socket
  operation waits at most the time left, and ``Watchdog`` shuts the socket down when the
  deadline passes, which interrupts a read that is blocked or keeps receiving drips.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import itertools
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from tasks.core.hosts import blocked_domain
from tasks.core.safe_http import (
    DNS_ERROR,
    IPAddress,
    Refusal,
    host_port,
    parse_ip,
    refuse_address,
    resolve_host,
    static_refusal,
)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DEADLINE_EXCEEDED = "deadline_exceeded"
REDIRECT_LOOP = "redirect_loop"
URL_BLOCKED = "url_blocked"


class FetchRefused(Exception):
    """A fetch stopped by a guard; the message starts with the failure reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Destination:
    """Which addresses a fetch may connect to: public ones, plus private ones when
    ``allow_private`` is set, or when "host:port" or "address:port" is in ``exempt``
    (an exemption by name is an operator's statement about that name, not a stranger's).
    No host on ``blocked`` (canonical domains, with their subdomains) is reached at all."""

    allow_private: bool
    exempt: frozenset[str] = field(default_factory=frozenset)
    blocked: frozenset[str] = field(default_factory=frozenset)

    def blocklist_refusal(self, url: str) -> Refusal | None:
        host, _ = host_port(url)
        domain = blocked_domain(host, self.blocked)
        if domain is None:
            return None
        return Refusal(URL_BLOCKED, f"{host} is on the blocklist ({domain})")

    def refusal(self, host: str, port: int, addr: IPAddress) -> Refusal | None:
        if f"{host}:{port}" in self.exempt or f"{addr}:{port}" in self.exempt:
            return None
        return refuse_address(host, addr, self.allow_private)


# -- the deadline ------------------------------------------------------------------------------


class Watchdog:
    """One daemon thread per process that shuts down sockets whose deadline has passed.

    ``watch`` keeps a duplicate of the socket's descriptor, so the shutdown always reaches
    the watched socket even if its own descriptor was closed and reused meanwhile (shutdown
    acts on the socket, which both descriptors share); ``unwatch`` closes the duplicate.
    The thread wakes at most every ``granularity`` seconds.
    """

    def __init__(self, granularity: float = 0.02) -> None:
        self.granularity = granularity
        self._heap: list[tuple[float, int, list[socket.socket | None]]] = []
        self._cond = threading.Condition()
        self._counter = itertools.count()
        self._pid = -1

    def watch(self, sock: socket.socket, deadline: float) -> list[socket.socket | None]:
        entry: list[socket.socket | None] = [sock.dup()]
        with self._cond:
            if self._pid != os.getpid():  # first use in this process (threads do not fork)
                self._pid, self._heap = os.getpid(), []
                threading.Thread(target=self._run, name="fetch-watchdog", daemon=True).start()
            heapq.heappush(self._heap, (deadline, next(self._counter), entry))
            if self._heap[0][2] is entry:
                self._cond.notify()
        return entry

    def unwatch(self, entry: list[socket.socket | None]) -> None:
        with self._cond:
            dup, entry[0] = entry[0], None
        if dup is not None:
            dup.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                expired = []
                while self._heap and self._heap[0][0] <= now:
                    expired.append(heapq.heappop(self._heap)[2])
                for entry in expired:
                    dup, entry[0] = entry[0], None
                    if dup is not None:
                        _shutdown(dup)
                wait = self._heap[0][0] - now if self._heap else None
                self._cond.wait(None if wait is None else max(wait, self.granularity))


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by its peer
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


WATCHDOG = Watchdog()

# -- DNS with a timeout ---------------------------------------------------------------------

_dns_pool: tuple[int, ThreadPoolExecutor] | None = None
_dns_lock = threading.Lock()


def _dns_executor() -> ThreadPoolExecutor:
    global _dns_pool
    with _dns_lock:
        if _dns_pool is None or _dns_pool[0] != os.getpid():
            _dns_pool = (os.getpid(), ThreadPoolExecutor(16, thread_name_prefix="dns"))
        return _dns_pool[1]


def resolve_within(
    host: str, timeout: float, resolve: Callable[[str], list[str]] = resolve_host
) -> list[str]:
    """``resolve(host)`` in a thread, given at most ``timeout`` seconds (getaddrinfo itself
    takes no timeout); an IP literal is returned as it is. Raises FetchRefused."""
    try:
        return [str(parse_ip(host))]
    except ValueError:
        pass
    if timeout <= 0:
        raise FetchRefused(DEADLINE_EXCEEDED, f"no time left to resolve {host}")
    future = _dns_executor().submit(resolve, host)
    try:
        addresses = future.result(timeout=timeout)
    except FutureTimeout:
        raise FetchRefused(DNS_ERROR, f"{host}: no answer within {timeout:.1f}s") from None
    except OSError as e:
        raise FetchRefused(DNS_ERROR, f"{host}: {e}") from None
    if not addresses:
        raise FetchRefused(DNS_ERROR, f"{host}: no addresses")
    return addresses


def checked_addresses(
    url: str,
    dest: Destination,
    timeout: float,
    resolve: Callable[[str], list[str]] = resolve_host,
) -> list[str]:
    """The addresses ``url``'s host resolves to, every one of them allowed by ``dest``;
    raises FetchRefused with the reason otherwise."""
    refusal = static_refusal(url, dest.allow_private, dest.exempt) or dest.blocklist_refusal(url)
    if refusal is not None:
        raise FetchRefused(refusal.reason, refusal.detail)
    host, port = host_port(url)
    addresses = resolve_within(host, timeout, resolve)
    for address in addresses:
        refused = dest.refusal(host, port, parse_ip(address))
        if refused is not None:
            raise FetchRefused(refused.reason, refused.detail)
    return addresses


# -- pinned connections ----------------------------------------------------------------------


class _Pinned:
    """Mixin: connect to ``address`` (already checked) instead of resolving ``host``, and
    put the socket under the watchdog until ``release``."""

    address: str
    deadline: float
    watched: list[socket.socket | None] | None = None
    host: str
    port: int
    timeout: float | None

    def _open_socket(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        self.watched = WATCHDOG.watch(sock, self.deadline)
        sock.settimeout(self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect((self.address, self.port))
        except BaseException:
            sock.close()
            raise
        return sock

    def release(self) -> None:
        if self.watched is not None:
            WATCHDOG.unwatch(self.watched)
            self.watched = None


class PinnedHTTPConnection(_Pinned, http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, deadline: float, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address, self.deadline = address, deadline

    def connect(self) -> None:
        self.sock = self._open_socket()


class PinnedHTTPSConnection(_Pinned, http.client.HTTPSConnection):
    def __init__(
        self,
        host: str,
        port: int,
        address: str,
        deadline: float,
        timeout: float,
        context: ssl.SSLContext | None = None,
    ):
        super().__init__(host, port, timeout=timeout, context=context)
        self.address, self.deadline = address, deadline

    def connect(self) -> None:
        sock = self._open_socket()
        # SNI and certificate checks use the URL's host name, not the address.
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


@dataclass
class Response:
    """A final (non-redirect) response: ``url`` after redirects, and the open connection.
    Call ``close`` when done (``get`` used as a context manager does)."""

    url: str
    status: int
    reason: str
    headers: http.client.HTTPMessage
    raw: http.client.HTTPResponse
    conn: PinnedHTTPConnection | PinnedHTTPSConnection
    deadline: float

    def read_capped(self, max_bytes: int, chunk: int = 64 * 1024) -> bytes:
        """The whole body, or FetchRefused: ``too_large`` past ``max_bytes`` (checked
        against Content-Length first), ``deadline_exceeded`` past the deadline."""
        length = self.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise FetchRefused("too_large", f"Content-Length {length} > {max_bytes} bytes")
        parts, size = [], 0
        while True:
            part = _step(self.deadline, lambda: self.raw.read1(chunk), "reading the body")
            if not part:
                break
            parts.append(part)
            size += len(part)
            if size > max_bytes:
                raise FetchRefused("too_large", f"more than {max_bytes} bytes")
        _check_deadline(self.deadline, "reading the body")
        return b"".join(parts)

    def close(self) -> None:
        self.conn.release()
        self.raw.close()
        self.conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_deadline(deadline: float, doing: str) -> None:
    if time.monotonic() >= deadline:
        raise FetchRefused(DEADLINE_EXCEEDED, f"deadline passed while {doing}")


def _step(deadline: float, op: Callable[[], bytes], doing: str) -> bytes:
    """One blocking socket operation; after the watchdog cut it, say so."""
    try:
        result = op()
    except (OSError, http.client.HTTPException, ValueError):
        _check_deadline(deadline, doing)
        raise
    if not result:
        _check_deadline(deadline, doing)  # a shut-down socket reads as end of stream
    return result


def get(
    url: str,
    dest: Destination,
    deadline: float,
    headers: dict[str, str],
    *,
    io_timeout: float,
    max_redirects: int = 10,
    resolve: Callable[[str], list[str]] = resolve_host,
    ssl_context: ssl.SSLContext | None = None,
) -> Response:
    """GET ``url`` following up to ``max_redirects`` redirects, every hop pinned to checked
    addresses and the whole exchange within ``deadline`` (a ``time.monotonic()`` value).

    Returns the final response for status 2xx; raises FetchRefused for a guard (reason
    first), ``http.client.HTTPException`` / ``OSError`` for a broken exchange, and
    ``HTTPStatusError`` ("HTTP Error 404: Not Found", urllib's wording) for other statuses.
    """
    visited: list[str] = []
    for _ in range(max_redirects + 1):
        visited.append(url)
        response = _get_once(url, dest, deadline, headers, io_timeout, resolve, ssl_context)
        if response.status not in REDIRECT_STATUSES:
            if 200 <= response.status < 300:
                return response
            response.close()
            raise HTTPStatusError(response.status, response.reason, url)
        location = response.headers.get("Location")
        response.close()
        if not location:
            raise HTTPStatusError(response.status, "redirect without Location", url)
        url = urljoin(url, location)
        if url in visited:
            raise FetchRefused(REDIRECT_LOOP, f"redirect back to {url}")
    raise FetchRefused(REDIRECT_LOOP, f"more than {max_redirects} redirects from {visited[0]}")


class HTTPStatusError(Exception):
    def __init__(self, status: int, reason: str, url: str) -> None:
        super().__init__(f"HTTP Error {status}: {reason}")
        self.status, self.url = status, url


def _get_once(
    url: str,
    dest: Destination,
    deadline: float,
    headers: dict[str, str],
    io_timeout: float,
    resolve: Callable[[str], list[str]],
    ssl_context: ssl.SSLContext | None,
) -> Response:
    addresses = checked_addresses(url, dest, deadline - time.monotonic(), resolve)
    parts = urlsplit(url)
    host, port = host_port(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    last_error: Exception | None = None
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        timeout = min(io_timeout, remaining)
        conn: PinnedHTTPConnection | PinnedHTTPSConnection
        if parts.scheme.lower() == "https":
            conn = PinnedHTTPSConnection(host, port, address, deadline, timeout, ssl_context)
        else:
            conn = PinnedHTTPConnection(host, port, address, deadline, timeout)
        try:
            conn.request("GET", target, headers=headers)
            raw = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.release()
            conn.close()
            _check_deadline(deadline, f"waiting for {url}")
            if isinstance(e, ConnectionRefusedError | socket.gaierror):
                last_error = e
                continue  # the next checked address
            raise
        return Response(url, raw.status, raw.reason, raw.headers, raw, conn, deadline)
    _check_deadline(deadline, f"connecting to {url}")
    raise last_error or OSError(f"no address to connect to for {url}")


def check_destinations(
    urls: Collection[str],
    dest: Destination,
    timeout: float,
    resolve: Callable[[str], list[str]] = resolve_host,
    workers: int = 32,
) -> dict[str, Refusal | None]:
    """The SSRF pre-check of many URLs: each URL's static checks (scheme, IP literals),
    then one lookup per (host, port), in parallel, each given ``timeout`` seconds."""
    verdicts: dict[str, Refusal | None] = {}
    by_host: dict[tuple[str, int], list[str]] = {}
    for url in urls:
        refusal = static_refusal(url, dest.allow_private, dest.exempt)
        if refusal is None:
            by_host.setdefault(host_port(url), []).append(url)
        verdicts[url] = refusal

    def check(host_urls: list[str]) -> Refusal | None:
        try:
            checked_addresses(host_urls[0], dest, timeout, resolve)
        except FetchRefused as e:
            return Refusal(e.reason, str(e))
        return None

    if by_host:
        with ThreadPoolExecutor(min(workers, len(by_host))) as pool:
            for host_urls, refusal in zip(
                by_host.values(), pool.map(check, by_host.values()), strict=True
            ):
                verdicts.update(dict.fromkeys(host_urls, refusal))
    return verdicts


__all__ = [
    "Destination",
    "FetchRefused",
    "HTTPStatusError",
    "Response",
    "WATCHDOG",
    "check_destinations",
    "checked_addresses",
    "get",
    "resolve_within",
]
