"""Per-page caps and content codings in the site crawler, on small pages served on 127.0.0.1."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import pytest

from tasks.core.config import ConfigError, CrawlConfig, load_config
from tasks.crawl.site_crawler import CrawlResult, crawl_sites
from tests.crawl.hostile_inputs import gzip_bomb, links_page, serve_fixed

HTML = {"Content-Type": "text/html"}
ROBOTS_NONE = (404, {}, b"")
PAGE = b'<html><body><img src="/a.png" alt="a dress"><a href="/next.html">next</a></body></html>'


@pytest.fixture(autouse=True)
def private_networks_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPFLOW_ALLOW_PRIVATE_NETWORKS", "1")


def run_crawl(seed: str, **options: Any) -> CrawlResult:
    cfg = CrawlConfig(seeds=[seed], allow_private_networks=True, timeout=2.0, **options)
    return asyncio.run(crawl_sites(cfg))


def assert_links_accounted(result: CrawlResult) -> None:
    c = result.counts
    parts = ("followed", "already_seen", "off_domain", "skipped_page_cap", "skipped_frontier_full")
    assert c["links_found"] == sum(c[f"links_{p}"] for p in parts), dict(c)
    outcomes = ("fetched", "failed", "unvisited_max_pages", "redirect_duplicate")
    assert c["pages_discovered"] == sum(c[f"pages_{o}"] for o in outcomes), dict(c)


def test_links_and_images_per_page_capped_and_counted() -> None:
    routes = {"/": (200, HTML, links_page(300, n_images=50)), "/robots.txt": ROBOTS_NONE}
    with serve_fixed(routes) as url:
        result = run_crawl(url + "/", max_pages=1, max_links_per_page=100, max_images_per_page=20)
    c = result.counts
    assert len(result.pairs) == c["pairs_found_site"] == 20
    assert c["images_skipped_page_cap"] == 30
    assert c["links_found"] == 300 and c["links_skipped_page_cap"] == 200
    assert c["links_followed"] == 100 and c["pages_unvisited_max_pages"] == 100
    assert_links_accounted(result)


def test_frontier_cap_counted_in_process() -> None:
    routes = {
        "/": (200, HTML, links_page(300)),
        "/?": (200, HTML, b"<html>no links</html>"),
        "/robots.txt": ROBOTS_NONE,
    }
    with serve_fixed(routes) as url:
        result = run_crawl(url + "/", max_pages=5, max_frontier_urls=50)
    c = result.counts
    assert c["pages_discovered"] == 50 and c["links_skipped_frontier_full"] == 300 - 49
    assert c["pages_fetched"] == 5 and c["pages_unvisited_max_pages"] == 45
    assert_links_accounted(result)


def test_frontier_must_hold_max_pages() -> None:
    with pytest.raises(ConfigError, match="max_frontier_urls \\(10\\) is below max_pages"):
        load_config({"crawl": {"max_pages": 20, "max_frontier_urls": 10}})


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        ("gzip", zlib.compress(PAGE, wbits=31)),
        ("x-gzip", zlib.compress(PAGE, wbits=31)),
        ("gzip", zlib.compress(PAGE[:40], wbits=31) + zlib.compress(PAGE[40:], wbits=31)),
        ("deflate", zlib.compress(PAGE)),
        ("deflate", zlib.compress(PAGE, wbits=-15)),  # raw deflate, as some servers send
        ("identity", PAGE),
    ],
    ids=["gzip", "x-gzip", "gzip-two-members", "deflate-zlib", "deflate-raw", "identity"],
)
def test_compressed_pages_decoded(coding: str, body: bytes) -> None:
    routes = {"/": (200, {**HTML, "Content-Encoding": coding}, body), "/robots.txt": ROBOTS_NONE}
    with serve_fixed(routes) as url:
        result = run_crawl(url + "/", max_pages=1)
    assert [(u, c) for u, c, _, _ in result.pairs] == [(url + "/a.png", "a dress")]


def test_bad_codings_named() -> None:
    routes = {
        "/br.html": (200, {**HTML, "Content-Encoding": "br"}, b"\x0b\x02\x80hello\x03"),
        "/corrupt.html": (200, {**HTML, "Content-Encoding": "gzip"}, b"\x1f\x8b\x08\0junk" * 9),
        "/robots.txt": ROBOTS_NONE,
    }
    with serve_fixed(routes) as url:
        br, corrupt = (run_crawl(url + path) for path in ("/br.html", "/corrupt.html"))
    assert [e["reason"] for e in br.errors] == ["unsupported_encoding"]
    assert [e["reason"] for e in corrupt.errors] == ["bad_encoding"]


def test_gzip_page_over_the_cap_is_too_large() -> None:
    # 20 KB on the wire, 20 MB inflated: the 1 MB cap is on the inflated bytes.
    bomb = gzip_bomb(b"<html><body>", b"<p>" * 1000, 20 * 1000 // 3 * 3)
    routes = {"/": (200, {**HTML, "Content-Encoding": "gzip"}, bomb), "/robots.txt": ROBOTS_NONE}
    with serve_fixed(routes) as url:
        result = run_crawl(url + "/", max_page_bytes=1_000_000)
    assert len(bomb) < 1_000_000
    assert [e["reason"] for e in result.errors] == ["too_large"]
    assert result.counts["pages_failed_too_large"] == 1


def test_gzip_bomb_robots_txt_is_unavailable() -> None:
    bomb = gzip_bomb(b"User-agent: *\n", b"#" * 1000, 20_000)
    routes = {"/robots.txt": (200, {"Content-Encoding": "gzip"}, bomb), "/": (200, HTML, PAGE)}
    with serve_fixed(routes) as url:
        result = run_crawl(url + "/", max_page_bytes=1_000_000)
    assert [e["reason"] for e in result.errors] == ["robots_unavailable"]
