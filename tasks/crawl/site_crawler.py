"""The breadth-first site crawler: async HTTP within allowed domains, robots.txt, a per-host
delay, caps on page size (decoded), time, redirects, links and images per page and the
frontier, and the SSRF guard on every hop.

Every URL that enters the frontier ends in exactly one outcome, counted: ``fetched``, a
named failure (``robots_disallowed``, ``ssrf_refused``, ``http_404``, ``http_5xx``,
``timeout``, ``too_large``, ``redirect_loop``, ``not_html``, ...), ``redirect_duplicate``
(a redirect onto a page already seen) or ``unvisited_max_pages`` (known at once for a URL
found after max_pages were queued, so the queue never holds more than max_pages):
``pages_discovered == pages_fetched + pages_failed + pages_redirect_duplicate +
pages_unvisited_max_pages``. Every link on a fetched page is counted once too:
``links_found == links_followed + links_already_seen + links_off_domain +
links_skipped_page_cap + links_skipped_frontier_full``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

import aiohttp
import yarl

from tasks.core.config import CrawlConfig
from tasks.core.safe_http import SSRF_REFUSED, AddressRefused, static_refusal
from tasks.crawl.candidates import CandidateSink
from tasks.crawl.html_extract import PageParseError, decode_html, extract_page, normalize_url
from tasks.crawl.page_body import ACCEPT_ENCODING, BodyError, read_capped
from tasks.crawl.safe_resolver import GuardedResolver

log = logging.getLogger(__name__)

_REDIRECTS = {301, 302, 303, 307, 308}
_HTML_TYPES = ("text/html", "application/xhtml+xml")


@dataclass
class Failure:
    """Why a page gave nothing: a counted reason code and a human detail."""

    reason: str
    detail: str = ""


@dataclass
class Fetched:
    """A page that answered 200 with HTML within the caps."""

    url: str
    """The URL that answered (the last hop of any redirects)."""
    body: bytes
    content_type: str


@dataclass
class CrawlResult:
    """Pairs as (url, caption, page_url, crawl_time), failures as dict rows, and counts.
    It is the crawler's CandidateSink unless the crawler is handed another one (the stage
    streams to Parquet instead); then ``pairs`` and ``errors`` stay empty."""

    pairs: list[tuple[str, str, str, datetime]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def add_pairs(
        self, pairs: Iterable[tuple[str, str]], page_url: str, when: datetime, source: str
    ) -> None:
        self.pairs.extend((url, caption, page_url, when) for url, caption in pairs)

    def add_error(self, error: dict[str, str]) -> None:
        self.errors.append(error)


def host_allowed(host: str, domains: list[str]) -> bool:
    """True when ``host`` is one of ``domains`` or a subdomain of one."""
    host = host.lower().strip("[]")
    return any(host == d or host.endswith("." + d) for d in domains)


class SiteCrawler:
    """One crawl over one HTTP session. ``resolve`` replaces DNS (tests map names to
    127.0.0.1 with it); pairs and failures go to ``sink`` as they are found (by default the
    result's lists); everything else comes from the CrawlConfig."""

    def __init__(
        self,
        cfg: CrawlConfig,
        resolve: Callable[[str], list[str]] | None = None,
        sink: CandidateSink | None = None,
    ) -> None:
        self.cfg = cfg
        self._resolve = resolve
        self.result = CrawlResult()
        self._sink: CandidateSink = sink or self.result
        self._seen: set[str] = set()
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._queued = 0
        self._domains: list[str] = []
        self._robots: dict[str, RobotFileParser | Failure] = {}
        self._robots_locks: dict[str, asyncio.Lock] = {}
        self._host_locks: dict[str, asyncio.Lock] = {}
        self._host_last: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None

    async def crawl(self, seeds: list[str]) -> CrawlResult:
        """Crawl breadth-first from ``seeds``; return pairs, failures and counts."""
        normalised = []
        for seed in seeds:
            url = normalize_url(seed)
            if url is None:
                self.result.counts["pages_discovered"] += 1
                self._outcome(seed, Failure("invalid_url", "not an http(s) URL"), "seed")
            else:
                normalised.append(url)
        self._domains = [d.lower() for d in self.cfg.allowed_domains] or sorted(
            {(urlsplit(u).hostname or "") for u in normalised}
        )
        for url in dict.fromkeys(normalised):  # seeds are config: never capped by the frontier
            self._enqueue(url, "seed")
        resolver = GuardedResolver(
            self.cfg.allow_private_networks, self.cfg.allow_private_hosts, self._resolve
        )
        connector = aiohttp.TCPConnector(limit=self.cfg.concurrency, resolver=resolver)
        async with aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": self.cfg.user_agent, "Accept-Encoding": ACCEPT_ENCODING},
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout),
            trust_env=False,
            auto_decompress=False,  # page_body inflates, never past max_page_bytes
        ) as self._session:
            workers = [asyncio.create_task(self._worker()) for _ in range(self.cfg.concurrency)]
            await self._queue.join()
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return self.result

    def _enqueue(self, url: str, referrer: str) -> None:
        """Add a new URL to the frontier: queued, or unvisited at once past max_pages (every
        queued URL is visited, in order, so later ones could only wait to be counted)."""
        self._seen.add(url)
        self.result.counts["pages_discovered"] += 1
        if self._queued >= self.cfg.max_pages:
            self._outcome(url, Failure("unvisited_max_pages"), referrer)
            return
        self._queued += 1
        self._queue.put_nowait((url, referrer))

    def _follow(self, links: list[str], skipped_by_page_cap: int, referrer: str) -> None:
        """Count every link of one page once, and enqueue the new ones the caps allow."""
        counts = self.result.counts
        counts["links_found"] += len(links) + skipped_by_page_cap
        counts["links_skipped_page_cap"] += skipped_by_page_cap
        for link in links:
            if not host_allowed(urlsplit(link).hostname or "", self._domains):
                counts["links_off_domain"] += 1
            elif link in self._seen:
                counts["links_already_seen"] += 1
            elif len(self._seen) >= self.cfg.max_frontier_urls:
                counts["links_skipped_frontier_full"] += 1
            else:
                counts["links_followed"] += 1
                self._enqueue(link, referrer)

    def _outcome(self, url: str, outcome: Failure | None, referrer: str) -> None:
        counts = self.result.counts
        if outcome is None:
            counts["pages_fetched"] += 1
            return
        if outcome.reason in ("unvisited_max_pages", "redirect_duplicate"):
            counts[f"pages_{outcome.reason}"] += 1
            return
        counts["pages_failed"] += 1
        counts[f"pages_failed_{outcome.reason}"] += 1
        self._sink.add_error(
            {
                "url": url,
                "reason": outcome.reason,
                "detail": outcome.detail,
                "referrer": referrer,
                "source": "site",
            }
        )
        log.debug("page %s failed: %s %s", url, outcome.reason, outcome.detail)

    async def _worker(self) -> None:
        while True:
            url, referrer = await self._queue.get()
            try:
                self._outcome(url, await self._visit(url), referrer)
            except Exception as e:  # one bad page must not stop the crawl; it is reported
                log.exception("page %s: unexpected error", url)
                self._outcome(url, Failure("internal_error", repr(e)), referrer)
            finally:
                self._queue.task_done()

    async def _visit(self, url: str) -> Failure | None:
        fetched = await self._fetch_page(url)
        if isinstance(fetched, Failure):
            return fetched
        if fetched.url != url:
            if fetched.url in self._seen:
                return Failure("redirect_duplicate", fetched.url)
            self._seen.add(fetched.url)
        text, had_errors = decode_html(fetched.body, fetched.content_type)
        self.result.counts["pages_decode_errors"] += had_errors
        try:
            page = extract_page(
                text, fetched.url, self.cfg.max_images_per_page, self.cfg.max_links_per_page
            )
        except PageParseError as e:
            return Failure("parse_error", str(e))
        self._sink.add_pairs(page.pairs, fetched.url, datetime.now(UTC), "site")
        self.result.counts["pairs_found_site"] += len(page.pairs)
        for reason, n in page.skipped_images.items():
            self.result.counts[f"images_skipped_{reason}"] += n
        self._follow(page.links, page.links_over_cap, fetched.url)
        return None

    async def _fetch_page(self, url: str) -> Fetched | Failure:
        """GET ``url``, following redirects by hand so every hop is checked."""
        chain = [url]
        current = url
        for _ in range(self.cfg.max_redirects + 1):
            refused = await self._refusal(current)
            if refused is not None:
                return refused
            response = await self._request(current)
            if isinstance(response, Fetched | Failure):
                return response
            target = normalize_url(response, current)
            if target is None:
                return Failure("bad_redirect", f"{current} -> {response!r}")
            if target in chain:
                return Failure("redirect_loop", " -> ".join([*chain, target]))
            if not host_allowed(urlsplit(target).hostname or "", self._domains):
                return Failure("redirect_off_domain", f"{current} -> {target}")
            chain.append(target)
            current = target
        return Failure("too_many_redirects", " -> ".join(chain))

    async def _refusal(self, url: str) -> Failure | None:
        refusal = static_refusal(url, self.cfg.allow_private_networks, self.cfg.allow_private_hosts)
        if refusal is not None:
            return Failure(refusal.reason, refusal.detail)
        if not self.cfg.respect_robots:
            return None
        robots = await self._robots_for(url)
        if isinstance(robots, Failure):
            return robots
        if not robots.can_fetch(self.cfg.user_agent, url):
            return Failure("robots_disallowed", url)
        return None

    async def _request(self, url: str) -> Fetched | Failure | str:
        """One GET: the page, a failure, or a redirect's Location header."""
        assert self._session is not None
        await self._wait_for_host(url)
        try:
            async with asyncio.timeout(self.cfg.timeout):
                # The URL is already normalised and escaped: send it exactly as it is.
                target = yarl.URL(url, encoded=True)
                async with self._session.get(target, allow_redirects=False) as resp:
                    if resp.status in _REDIRECTS and resp.headers.get("Location"):
                        return resp.headers["Location"]
                    failure = _status_failure(resp.status, url)
                    if failure is not None:
                        return failure
                    ctype = resp.headers.get("Content-Type", "")
                    if not ctype.lower().startswith(_HTML_TYPES):
                        return Failure("not_html", f"{url}: {ctype or 'no Content-Type'}")
                    body = await read_capped(resp, self.cfg.max_page_bytes)
                    if body is None:
                        return Failure("too_large", f"over {self.cfg.max_page_bytes} bytes")
                    return Fetched(url, body, ctype)
        except BodyError as e:
            return Failure(e.reason, f"{url}: {e.detail}")
        except (TimeoutError, aiohttp.ClientError) as e:
            return _client_failure(e, url, self.cfg.timeout)

    async def _wait_for_host(self, url: str) -> None:
        """Space request starts to one host by the per-host delay (or its Crawl-delay)."""
        host = urlsplit(url).netloc
        delay = self.cfg.per_host_delay
        robots = self._robots.get(_origin(url))
        if isinstance(robots, RobotFileParser):
            crawl_delay = robots.crawl_delay(self.cfg.user_agent)
            if crawl_delay is not None:
                delay = max(delay, min(float(crawl_delay), self.cfg.max_crawl_delay))
        if delay <= 0:
            return
        async with self._host_locks.setdefault(host, asyncio.Lock()):
            wait = self._host_last.get(host, -float("inf")) + delay - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._host_last[host] = time.monotonic()

    async def _robots_for(self, url: str) -> RobotFileParser | Failure:
        """The origin's robots.txt, fetched once (RFC 9309: a 4xx allows everything; a 5xx
        or an unreachable origin disallows everything)."""
        origin = _origin(url)
        async with self._robots_locks.setdefault(origin, asyncio.Lock()):
            if origin not in self._robots:
                self._robots[origin] = await self._fetch_robots(origin)
        return self._robots[origin]

    async def _fetch_robots(self, origin: str) -> RobotFileParser | Failure:
        """GET robots.txt, following up to five redirects, each hop checked by the guard."""
        url = f"{origin}/robots.txt"
        for _ in range(5):
            refusal = static_refusal(
                url, self.cfg.allow_private_networks, self.cfg.allow_private_hosts
            )
            if refusal is not None:
                return Failure(refusal.reason, f"robots.txt: {refusal.detail}")
            reply = await self._robots_request(url)
            if not isinstance(reply, str):
                return reply
            target = normalize_url(reply, url)
            if target is None:
                return Failure("robots_unavailable", f"{url}: bad redirect {reply!r}")
            url = target
        return Failure("robots_unavailable", f"{origin}/robots.txt: too many redirects")

    async def _robots_request(self, url: str) -> RobotFileParser | Failure | str:
        """One GET of a robots.txt: the parsed rules, a failure, or a redirect's Location."""
        assert self._session is not None
        await self._wait_for_host(url)
        try:
            async with asyncio.timeout(self.cfg.timeout):
                async with self._session.get(url, allow_redirects=False) as resp:
                    if resp.status in _REDIRECTS and resp.headers.get("Location"):
                        return resp.headers["Location"]
                    if 400 <= resp.status < 500:
                        return _robots_parser(url, b"")
                    if resp.status != 200:
                        return Failure("robots_unavailable", f"{url}: HTTP {resp.status}")
                    body = await read_capped(resp, self.cfg.max_page_bytes)
        except BodyError as e:
            return Failure("robots_unavailable", f"{url}: {e.detail}")
        except (TimeoutError, aiohttp.ClientError) as e:
            return _client_failure(e, url, self.cfg.timeout)
        if body is None:
            return Failure("robots_unavailable", f"{url}: larger than max_page_bytes")
        return _robots_parser(url, body)


def _robots_parser(url: str, body: bytes) -> RobotFileParser:
    parser = RobotFileParser(url)
    parser.parse(body.decode("utf-8", errors="replace").splitlines())
    return parser


def _client_failure(error: Exception, url: str, timeout: float) -> Failure:
    """The named reason for an exception from one request."""
    if isinstance(error, TimeoutError):
        return Failure("timeout", f"{url}: no complete response within {timeout}s")
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        if isinstance(error.os_error, AddressRefused):
            return Failure(SSRF_REFUSED, str(error.os_error))
        return Failure("dns_error", str(error))
    return Failure("connection_error", f"{url}: {type(error).__name__}: {error}")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _status_failure(status: int, url: str) -> Failure | None:
    if status == 200:
        return None
    if status in (404, 410):
        return Failure("http_404", f"{url}: HTTP {status}")
    if 500 <= status < 600:
        return Failure("http_5xx", f"{url}: HTTP {status}")
    if 400 <= status < 500:
        return Failure("http_4xx", f"{url}: HTTP {status}")
    return Failure("http_other", f"{url}: HTTP {status}")


async def crawl_sites(
    cfg: CrawlConfig,
    resolve: Callable[[str], list[str]] | None = None,
    sink: CandidateSink | None = None,
) -> CrawlResult:
    """Crawl ``cfg.seeds`` breadth-first (see SiteCrawler)."""
    return await SiteCrawler(cfg, resolve, sink).crawl(cfg.seeds)
