"""Bounded memory against hostile input: each crawl runs in a fresh child process
(tests/crawl/memory_probe.py) whose peak RSS is compared with a stated bound over the peak of
an (almost) empty crawl, and the cap that held it is counted. All traffic is on 127.0.0.1.

Measured here (baseline ~155 MiB): the 200k-links web of 6 pages peaked at baseline + 243 MiB
before the caps, growing with every page fetched, and at + 95 MiB with them (one page's lxml
tree); the WAT file with a 1 GiB record at + 2,024 MiB before, + 10 MiB after; the one with
a 1 GiB header line at + 3,095 MiB before, refused below the baseline after; the gzip bomb at
+ 0 MiB both before and after (aiohttp 3.14 inflates in steps; the crawler no longer depends
on that).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tasks.core.config import CrawlConfig
from tests.crawl.hostile_inputs import (
    Response,
    gzip_bomb,
    links_page,
    serve_fixed,
    write_wat_with_endless_header,
    write_wat_with_huge_record,
)

REPO = Path(__file__).resolve().parents[2]
HTML = {"Content-Type": "text/html"}
ROBOTS_NONE = (404, {}, b"")
MIB = 1 << 20
LINKS_PER_PAGE = 200_000


def probe(root: Path, crawl: dict[str, Any]) -> dict[str, Any]:
    """Run the crawl stage in a fresh interpreter; its peak RSS (MiB) and counts."""
    cfg = {"storage": {"root": str(root)}, "crawl": {"allow_private_networks": True, **crawl}}
    env = {**os.environ, "CLIPFLOW_ALLOW_PRIVATE_NETWORKS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.crawl.memory_probe", json.dumps(cfg)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def baseline_mib(tmp_path_factory: pytest.TempPathFactory) -> float:
    """The peak RSS of a crawl of one small page: the interpreter, the imports, the session."""
    routes = {"/": (200, HTML, b'<img src="/a.png" alt="one image">'), "/robots.txt": ROBOTS_NONE}
    with serve_fixed(routes) as url:
        out = probe(tmp_path_factory.mktemp("baseline"), {"seeds": [url + "/"]})
    assert out["counts"]["pages_fetched"] == 1
    return float(out["peak_rss_mib"])


def test_pages_of_200k_links_hold_the_frontier(tmp_path: Path, baseline_mib: float) -> None:
    # Every page carries 200k links no other page has (page /?p=k links to the next 200k),
    # so without caps each page fetched adds 200k URLs to the frontier.
    def page(query: str) -> Response:
        k = int(query.removeprefix("p=") or 0)
        return 200, HTML, links_page(LINKS_PER_PAGE, first=k * LINKS_PER_PAGE + 1)

    routes = {"/": page, "/?": page, "/robots.txt": ROBOTS_NONE}
    pages = 6
    with serve_fixed(routes) as url:
        out = probe(tmp_path, {"seeds": [url + "/"], "max_pages": pages, "max_page_bytes": 8 * MIB})
    c, caps = out["counts"], CrawlConfig()
    # One page is parsed at a time (lxml's tree of a 5 MB page is ~100 MiB, freed after it);
    # what must not grow is the frontier: at most max_links_per_page new URLs per page.
    bound = baseline_mib + 160
    assert out["peak_rss_mib"] < bound, (out["peak_rss_mib"], bound)
    assert c["pages_fetched"] == pages
    assert c["links_found"] == pages * LINKS_PER_PAGE
    assert c["links_skipped_page_cap"] == pages * (LINKS_PER_PAGE - caps.max_links_per_page)
    assert c["pages_discovered"] == 1 + c["links_followed"] <= caps.max_frontier_urls


def test_gzip_bomb_page_cut_at_the_decoded_cap(tmp_path: Path, baseline_mib: float) -> None:
    # ~1 MB on the wire, 1 GiB once inflated; the cap is on the inflated bytes.
    bomb = gzip_bomb(b"<html><body>", b"\0" * MIB, 1024)
    gzip_html = {**HTML, "Content-Encoding": "gzip"}
    routes = {"/": (200, gzip_html, bomb), "/robots.txt": ROBOTS_NONE}
    with serve_fixed(routes) as url:
        out = probe(tmp_path, {"seeds": [url + "/"]})
    bound = baseline_mib + 40  # the 5 MB cap, a few copies of it, and no more
    assert out["peak_rss_mib"] < bound, (out["peak_rss_mib"], bound)
    assert out["counts"]["pages_failed_too_large"] == 1


def test_wat_record_of_a_gigabyte_skipped(tmp_path: Path, baseline_mib: float) -> None:
    wat = tmp_path / "huge.warc.wat.gz"
    write_wat_with_huge_record(wat, 1024)  # one gzip member inflating to 1 GiB of JSON
    out = probe(tmp_path / "root", {"wat_files": [str(wat)]})
    bound = baseline_mib + 80  # the 10 MB record cap, warcio's inflate blocks, no more
    assert out["peak_rss_mib"] < bound, (out["peak_rss_mib"], bound)
    c = out["counts"]
    assert c["archive_wat_records_too_large"] == 1
    assert c["archive_wat_records_read"] == 2 and c["pairs_after_dedup"] == 2


def test_wat_header_line_of_a_gigabyte_refused(tmp_path: Path, baseline_mib: float) -> None:
    wat = tmp_path / "endless.warc.wat.gz"
    write_wat_with_endless_header(wat, 1024)  # one header line of 1 GiB
    out = probe(tmp_path / "root", {"wat_files": [str(wat)]})
    bound = baseline_mib + 80  # the 10 MB cap on a record's headers, a few copies of it
    assert out["peak_rss_mib"] < bound, (out["peak_rss_mib"], bound)
    assert out["refused"].endswith("endless.warc.wat.gz: record headers over 10000000 bytes")
