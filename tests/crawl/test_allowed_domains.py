"""Crawl scoping by ``allowed_domains``, with a second loopback origin (127.0.0.2) as the
other domain: its links are counted as off-domain and never fetched, which its own request
log shows, until the config allows it."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from tasks.crawl.site_crawler import CrawlResult
from tests.crawl.test_site_crawl import assert_accounted, run_crawl
from tests.download.loopback import LoopbackServer, send


def _page(*, links: list[str], images: list[tuple[str, str]]) -> bytes:
    body = "".join(f'<a href="{href}">link</a>' for href in links)
    body += "".join(f'<img src="{src}" alt="{alt}">' for src, alt in images)
    return f"<!doctype html><html><body>{body}</body></html>".encode()


def _html(body: bytes):
    def route(h: BaseHTTPRequestHandler) -> None:
        send(h, body, "text/html; charset=utf-8")

    return route


@pytest.fixture
def two_origins() -> Iterator[tuple[LoopbackServer, LoopbackServer]]:
    """``home`` (127.0.0.1) links to two pages of ``other`` (127.0.0.2) and to one of its
    own; every page has one captioned image."""
    home, other = LoopbackServer("127.0.0.1"), LoopbackServer("127.0.0.2")
    h, o = f"http://127.0.0.1:{home.port}", f"http://127.0.0.2:{other.port}"
    home.routes["/"] = _html(_page(
        links=[f"{o}/a.html", f"{o}/b.html", "/inner.html"],
        images=[("/home.png", "a red bicycle leaning on a fence")],
    ))  # fmt: skip
    home.routes["/inner.html"] = _html(_page(
        links=[f"{o}/a.html"], images=[("/inner.png", "a bowl of ripe yellow lemons")]
    ))  # fmt: skip
    for name in ("a", "b"):
        other.routes[f"/{name}.html"] = _html(_page(
            links=[f"{h}/"], images=[(f"/{name}.png", f"a picture named {name} on the far site")]
        ))  # fmt: skip
    try:
        yield home, other
    finally:
        home.close()
        other.close()


def _captions(result: CrawlResult) -> set[str]:
    return {caption for _, caption, _, _ in result.pairs}


def test_links_to_another_domain_are_counted_and_never_fetched(two_origins) -> None:
    home, other = two_origins
    result = run_crawl([f"http://127.0.0.1:{home.port}/"])  # allowed: the seed's host
    assert_accounted(result)
    assert other.requests == []  # not even robots.txt
    assert result.counts["links_off_domain"] == 3  # two on the seed page, one on inner.html
    assert result.counts["pages_fetched"] == 2
    assert _captions(result) == {"a red bicycle leaning on a fence", "a bowl of ripe yellow lemons"}


def test_an_allowed_second_domain_is_crawled(two_origins) -> None:
    home, other = two_origins
    result = run_crawl(
        [f"http://127.0.0.1:{home.port}/"], allowed_domains=["127.0.0.1", "127.0.0.2"]
    )
    assert_accounted(result)
    assert sorted(p for p in other.requests if p.endswith(".html")) == ["/a.html", "/b.html"]
    assert result.counts["links_off_domain"] == 0
    assert result.counts["pages_fetched"] == 4
    assert "a picture named b on the far site" in _captions(result)
