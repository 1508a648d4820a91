"""Crawl benchmarks, each side by side with a plain peer in the same run.

1. Site crawl of the demo web on 127.0.0.1: our async crawler (robots.txt, SSRF guard,
   caps, extraction, normalisation) vs a plain sequential urllib + lxml BFS; pages/s, pairs/s.
2. WAT reading: our reader (``tasks.crawl.wat.read_archive``: classification, URL resolution and
   normalisation, caption cleaning) vs a plain warcio + json loop on the same generated file.

    .venv/bin/python bench/bench_crawl.py [--quick]

Writes bench/results/crawl.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import lxml.html
from warcio.archiveiterator import ArchiveIterator
from warcio.warcwriter import WARCWriter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.web import build_demo_web  # noqa: E402
from tasks.core.config import CrawlConfig  # noqa: E402
from tasks.crawl.site_crawler import crawl_sites  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "crawl.json"
TIMEOUT = 1.0


def plain_crawl(seed: str, max_pages: int) -> tuple[int, int]:
    """The peer: sequential BFS with urllib and lxml, same host only, no robots or guard.

    It skips /hostile/ pages: urllib's timeout is per read, so the one-byte-a-second page
    would hold it for minutes."""
    host = urlsplit(seed).netloc
    queue, seen, pages, pairs = deque([seed]), {seed}, 0, 0
    while queue and pages < max_pages:
        url = queue.popleft()
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
                if not resp.headers.get("Content-Type", "").startswith("text/html"):
                    continue
                body = resp.read()
        except (OSError, urllib.error.URLError):
            continue
        pages += 1
        doc = lxml.html.document_fromstring(body.replace(b"\x00", b"") or b"<html/>")
        pairs += sum(1 for img in doc.iter("img") if img.get("src"))
        for a in doc.iter("a"):
            link = urljoin(url, a.get("href", "")).split("#")[0]
            skip = "/hostile/" in link or "/private/" in link
            if urlsplit(link).netloc == host and link not in seen and not skip:
                seen.add(link)
                queue.append(link)
    return pages, pairs


def serve_in_subprocess(site_dir: str) -> tuple[subprocess.Popen[bytes], str]:
    """The demo server in its own process, so its threads do not share the crawlers' GIL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "demo.web", "serve", site_dir, "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}/"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("demo server did not start")


def bench_site(size: str) -> dict[str, Any]:
    """Both crawlers on the same served demo web (preset ``size``): pages/s and pairs/s."""
    with tempfile.TemporaryDirectory() as tmp:
        summary = build_demo_web(tmp, size)
        # Both crawlers skip the hostile pages (ours by robots.txt, the peer by rule): they
        # measure timeouts, not crawling.
        robots = "User-agent: *\nDisallow: /private/\nDisallow: /hostile/\n"
        (Path(tmp) / "robots.txt").write_text(robots)
        proc, seed = serve_in_subprocess(tmp)
        try:
            cfg = CrawlConfig(
                seeds=[seed], allow_private_networks=True, timeout=TIMEOUT, max_pages=10_000
            )
            started = time.perf_counter()
            result = asyncio.run(crawl_sites(cfg))
            ours_s = time.perf_counter() - started
            started = time.perf_counter()
            plain_pages, plain_pairs = plain_crawl(seed, 10_000)
            plain_s = time.perf_counter() - started
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    ours_pages = result.counts["pages_fetched"]
    ours_pairs = len(result.pairs)
    return {
        "site_pages": summary["pages"],
        "concurrency": cfg.concurrency,
        "ours": {"pages": ours_pages, "pairs": ours_pairs, "seconds": ours_s},
        "plain": {"pages": plain_pages, "pairs": plain_pairs, "seconds": plain_s},
        "ours_pages_per_s": ours_pages / ours_s,
        "ours_pairs_per_s": ours_pairs / ours_s,
        "plain_pages_per_s": plain_pages / plain_s,
        "plain_pairs_per_s": plain_pairs / plain_s,
        "ratio_pages_per_s": (ours_pages / ours_s) / (plain_pages / plain_s),
    }


def write_wat(path: Path, records: int, seed: int = 0) -> None:
    """A gzip WAT file shaped like Common Crawl's: per page ~30 links, ~8 of them images."""
    rng = random.Random(seed)
    words = [
        "red",
        "blue",
        "coat",
        "dress",
        "bag",
        "shoe",
        "boot",
        "shirt",
        "summer",
        "winter",
        "sale",
        "new",
        "old",
        "cotton",
    ]
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for n in range(records):
            page = f"https://shop{n % 97}.example/catalog/item-{n}.html"
            links = [{"path": "A@/href", "url": f"/catalog/item-{rng.randrange(10**6)}.html"}
                     for _ in range(22)]  # fmt: skip
            for k in range(8):
                src = f"/img/{n}/{k}.jpg" if k % 2 else f"https://cdn.example/i/{n}-{k}.jpg"
                alt = " ".join(rng.choices(words, k=rng.randrange(0, 8)))
                links.append({"path": "IMG@/src", "url": src, "alt": alt})
            payload = {"Envelope": {
                "WARC-Header-Metadata": {"WARC-Target-URI": page},
                "Payload-Metadata": {"HTTP-Response-Metadata": {
                    "HTML-Metadata": {"Head": {"Title": "item"}, "Links": links}}},
            }}  # fmt: skip
            record = writer.create_warc_record(
                page, "metadata", payload=io.BytesIO(json.dumps(payload).encode()),
                warc_content_type="application/json",
                warc_headers_dict={"WARC-Date": "2024-03-01T12:30:00Z"},
            )  # fmt: skip
            writer.write_record(record)


def plain_wat(path: Path) -> tuple[int, int]:
    """The peer: warcio + json, image links taken as they are (no resolution, no cleaning)."""
    records = 0
    pairs: list[tuple[str, str, str]] = []
    with open(path, "rb") as fh:
        for record in ArchiveIterator(fh):
            if record.rec_type != "metadata":
                continue
            records += 1
            envelope = json.loads(record.content_stream().read())["Envelope"]
            page = envelope["WARC-Header-Metadata"]["WARC-Target-URI"]
            meta = envelope["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]
            pairs += [
                (link["url"], link.get("alt", ""), page)
                for link in meta.get("Links", [])
                if link.get("path") == "IMG@/src"
            ]
    return records, len(pairs)


def bench_wat(records: int) -> dict[str, Any]:
    """Both WAT readers on one generated file of ``records`` records: records/s."""
    from tasks.crawl.wat import read_archive

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.warc.wat.gz"
        write_wat(path, records)
        timings: dict[str, list[float]] = {"ours": [], "plain": []}
        for _ in range(3):  # alternate, keep the best: the machine is shared
            started = time.perf_counter()
            result = read_archive(str(path))
            timings["ours"].append(time.perf_counter() - started)
            started = time.perf_counter()
            plain_records, plain_pairs = plain_wat(path)
            timings["plain"].append(time.perf_counter() - started)
    ours_s, plain_s = min(timings["ours"]), min(timings["plain"])
    assert result.counts["wat_records"] == plain_records == records
    assert len(result.pairs) == plain_pairs
    return {
        "records": records,
        "pairs": plain_pairs,
        "ours_records_per_s": records / ours_s,
        "plain_records_per_s": records / plain_s,
        "ratio": plain_s / ours_s,
    }


def main() -> int:
    """Run both benchmarks, print the table, write bench/results/crawl.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="test-size web, 2,000 WAT records")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    site = bench_site("test" if args.quick else "demo")
    wat = bench_wat(2_000 if args.quick else 20_000)
    print(f"{'benchmark':<28}{'ours':>12}{'plain peer':>14}{'ratio':>8}")
    print(
        f"{'site crawl pages/s':<28}{site['ours_pages_per_s']:>12.1f}"
        f"{site['plain_pages_per_s']:>14.1f}{site['ratio_pages_per_s']:>8.2f}"
    )
    print(
        f"{'site crawl pairs/s':<28}{site['ours_pairs_per_s']:>12.1f}{site['plain_pairs_per_s']:>14.1f}"
    )
    print(
        f"{'WAT records/s':<28}{wat['ours_records_per_s']:>12.1f}"
        f"{wat['plain_records_per_s']:>14.1f}{wat['ratio']:>8.2f}"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"quick": args.quick, "site": site, "wat": wat}, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
