"""The site crawler against the demo web served on 127.0.0.1 (the `demo_web` fixture)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from demo.server import STALL_SECONDS, serve
from tasks.core.config import ConfigError, CrawlConfig, load_config
from tasks.crawl.html_extract import normalize_url
from tasks.crawl.site_crawler import CrawlResult, SiteCrawler, crawl_sites


def run_crawl(seeds: list[str], resolve: Any = None, **options: Any) -> CrawlResult:
    settings = {"allow_private_networks": True, "timeout": 1.5, "max_page_bytes": 1_000_000}
    cfg = CrawlConfig(seeds=seeds, **{**settings, **options})
    return asyncio.run(crawl_sites(cfg, resolve))


def failures(result: CrawlResult) -> dict[str, str]:
    return {e["url"]: e["reason"] for e in result.errors}


def assert_accounted(result: CrawlResult) -> None:
    c = result.counts
    outcomes = (
        c["pages_fetched"]
        + c["pages_failed"]
        + c["pages_unvisited_max_pages"]
        + c["pages_redirect_duplicate"]
    )
    assert outcomes == c["pages_discovered"], dict(c)
    per_reason = sum(v for k, v in c.items() if k.startswith("pages_failed_"))
    assert per_reason == c["pages_failed"] == len(result.errors)


@pytest.fixture(scope="module")
def full_crawl(demo_web) -> CrawlResult:
    return run_crawl([demo_web.url + "/"])


def test_every_expected_pair_found_once(demo_web, full_crawl) -> None:
    expected = {
        (
            normalize_url(demo_web.abs(p["url"])),
            p["caption"],
            normalize_url(demo_web.abs(p["page"])),
        )
        for p in demo_web.planted["pairs"]
    }
    found = [(u, c, page) for u, c, page, _ in full_crawl.pairs]
    assert set(found) == expected
    assert len(found) == len(demo_web.planted["pairs"])  # each page fetched once
    assert full_crawl.counts["pairs_found_site"] == len(found)


def test_planted_cases_seen_as_planted(demo_web, full_crawl) -> None:
    by_url: dict[str, set[str]] = {}
    for url, caption, _, _ in full_crawl.pairs:
        by_url.setdefault(url, set()).add(caption)
    planted = demo_web.planted
    # srcset: the 2x candidate is the pair's URL (relative srcset entries resolved).
    assert any("@2x.png" in url for url in by_url)
    # invalid UTF-8 bytes became U+FFFD, and the page was counted as badly encoded.
    for case in planted["invalid_utf8"]:
        assert by_url[demo_web.abs(case["url"])] == {case["caption"]}
        assert "\ufffd" in case["caption"]
    assert full_crawl.counts["pages_decode_errors"] >= 1
    long_alt = next(c for c in planted["bad_captions"] if c["kind"] == "very_long")
    assert len(next(iter(by_url[demo_web.abs(long_alt["url"])]))) == 5000
    for path in planted["robots_disallowed"]["image_urls"]:
        assert demo_web.abs(path) not in by_url
    # Reached only through /hostile/moved.html's redirect.
    pages = {page for _, _, page, _ in full_crawl.pairs}
    assert demo_web.abs(planted["redirect_only_pages"][0]) in pages


def test_failed_pages_named_and_accounted(demo_web, full_crawl) -> None:
    expected = {demo_web.abs(p): r for p, r in demo_web.planted["hostile"]["page_failures"].items()}
    for page in demo_web.planted["robots_disallowed"]["pages"]:
        expected[demo_web.abs(page)] = "robots_disallowed"
    assert failures(full_crawl) == expected
    assert_accounted(full_crawl)
    assert full_crawl.counts["pages_fetched"] == len(demo_web.planted["pages"]) - 1  # /private/


def test_max_pages_caps_fetches(demo_web) -> None:
    result = run_crawl([demo_web.url + "/"], max_pages=3)
    c = result.counts
    assert c["pages_fetched"] + c["pages_failed"] == 3
    assert c["pages_unvisited_max_pages"] == c["pages_discovered"] - 3 > 0
    assert_accounted(result)


def test_per_host_delay_spaces_requests(demo_web) -> None:
    started = time.monotonic()
    result = run_crawl([demo_web.url + "/"], max_pages=4, per_host_delay=0.3, concurrency=8)
    elapsed = time.monotonic() - started
    assert result.counts["pages_fetched"] == 4
    assert elapsed >= 0.3 * 4  # robots.txt + 4 pages: 5 request starts, 4 gaps


def test_page_size_cap(demo_web) -> None:
    # Streamed without Content-Length: cut off once past the cap.
    result = run_crawl([demo_web.abs("/hostile/huge.html")], max_page_bytes=50_000)
    assert failures(result) == {demo_web.abs("/hostile/huge.html"): "too_large"}
    # Declared by Content-Length: refused before reading.
    result = run_crawl([demo_web.abs("/fashion/page-001.html")], max_page_bytes=500)
    assert failures(result) == {demo_web.abs("/fashion/page-001.html"): "too_large"}


def test_timeouts_bound_stall_and_drip(demo_web) -> None:
    seeds = [demo_web.abs("/hostile/stall.html"), demo_web.abs("/hostile/slow-drip.html")]
    started = time.monotonic()
    result = run_crawl(seeds, timeout=0.5)
    # Bounded by the timeout: a generous margin for a loaded machine, far below what the
    # stalling route would hold without one (STALL_SECONDS).
    assert time.monotonic() - started < 10 < STALL_SECONDS / 4
    assert failures(result) == {url: "timeout" for url in seeds}


def test_redirect_loop_and_redirect_cap(demo_web) -> None:
    loop = demo_web.abs("/hostile/loop-a.html")
    assert failures(run_crawl([loop])) == {loop: "redirect_loop"}
    moved = demo_web.abs("/hostile/moved.html")
    assert failures(run_crawl([moved], max_redirects=0)) == {moved: "too_many_redirects"}


def test_robots_can_be_switched_off(demo_web) -> None:
    members = demo_web.abs("/private/members.html")
    assert failures(run_crawl([members])) == {members: "robots_disallowed"}
    result = run_crawl([members], respect_robots=False, max_pages=1)
    assert result.counts["pages_fetched"] == 1 and len(result.pairs) == 2


def test_bad_seeds_refused_up_front_or_reported(demo_web) -> None:
    with pytest.raises(ConfigError, match="crawl.seeds: .*'ftp://127.0.0.1/x' is not an http"):
        load_config({"crawl": {"seeds": ["ftp://127.0.0.1/x"]}})
    with pytest.raises(ConfigError, match="crawl.allow_private_hosts: .*not host:port"):
        load_config({"crawl": {"allow_private_hosts": ["127.0.0.1"]}})
    # Seeds handed to the crawler directly (not through a config) are reported, not raised.
    missing = demo_web.abs("/hostile/missing.html")
    cfg = CrawlConfig(allow_private_networks=True)
    result = asyncio.run(SiteCrawler(cfg).crawl(["ftp://127.0.0.1/x", missing]))
    assert failures(result) == {"ftp://127.0.0.1/x": "invalid_url", missing: "http_404"}
    assert_accounted(result)


def test_robots_crawl_delay_honoured_and_capped(tmp_path) -> None:
    (tmp_path / "robots.txt").write_text("User-agent: *\nCrawl-delay: 3\n")
    (tmp_path / "index.html").write_text('<a href="a.html">a</a><a href="b.html">b</a>')
    for name in ("a.html", "b.html"):
        (tmp_path / name).write_text(f'<img src="/{name}.png" alt="{name}">')
    with serve(tmp_path) as server:
        started = time.monotonic()
        result = run_crawl([server.url + "/"])
        assert time.monotonic() - started >= 6.0  # robots.txt, then 3 pages 3 s apart
        assert result.counts["pages_fetched"] == 3
        started = time.monotonic()
        result = run_crawl([server.url + "/"], max_crawl_delay=0.0)
        # Capped to 0: ~0.1 s here; the ceiling leaves a loaded machine 6 s of margin.
        assert time.monotonic() - started < 6.0
        assert result.counts["pages_fetched"] == 3
