"""The download stage against the demo web on 127.0.0.1: hostile images, the SSRF guard,
accounting, and a resume after SIGKILL."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image, ImageFile

from demo.planted import bomb_png
from demo.server import SSRF_ROUTES, SSRF_TEST_NAME
from tasks.core.config import PipelineConfig
from tasks.core.stage import RunContext
from tasks.core.storage import Storage
from tasks.download.fetch import FetchRefused, check_image, png_or_gif_size
from tasks.download.stage import (
    download,
    failure_reason,
    input_fingerprint,
    read_candidates,
    shard_results,
)

EXPECTED_HOSTILE_REASON = {
    "http_404": "http_404",
    "http_500": "http_5xx",
    "slow_drip": "deadline_exceeded",
    "stall": "deadline_exceeded",  # one deadline covers the wait for headers too
    "redirect_loop": "redirect_loop",
    "redirect_to_image": "opted_out",  # lands on the noai image
    "x_robots_noai": "opted_out",
    "not_an_image": "not_an_image",
    "truncated_jpeg": "truncated",
    "zero_bytes": "empty",
    "decompression_bomb": "too_many_pixels",
}


def make_config(root: Path, **download) -> PipelineConfig:
    options = {"processes_count": 1, "thread_count": 16, "timeout": 3, "image_size": 32}
    return PipelineConfig.model_validate(
        {
            "storage": {"root": str(root)},
            "crawl": {"allow_private_networks": True},
            "download": {**options, **download},
        }
    )


def write_candidates(storage: Storage, urls: list[str], captions: list[str] | None = None) -> None:
    frame = pd.DataFrame(
        {
            "url": urls,
            "caption": captions or [f"caption {i}" for i in range(len(urls))],
            "page_url": ["http://127.0.0.1/page.html"] * len(urls),
            "source": ["site"] * len(urls),
            "crawl_time": [pd.Timestamp.now(tz="UTC")] * len(urls),
        }
    )
    storage.write_bytes(storage.uri("crawl", "candidates-00000.parquet"), frame.to_parquet())


def fashion_urls(demo_web, n: int) -> list[str]:
    files = sorted((Path(demo_web.site_dir) / "img" / "fashion").glob("*.png"))[:n]
    assert len(files) == n, "the demo web has too few fashion images for this test"
    return [f"{demo_web.url}/img/fashion/{f.name}" for f in files]


def test_every_hostile_image_gets_its_named_reason(demo_web, tmp_root):
    cfg = make_config(tmp_root)
    storage = Storage(cfg.storage)
    hostile = demo_web.planted["hostile"]["images"]
    good = fashion_urls(demo_web, 5)
    urls = [f"{demo_web.url}{path}" for path in hostile.values()] + good
    write_candidates(storage, urls)

    started = time.monotonic()
    result = download(cfg, storage)
    # The slow-drip image would take most of an hour and the stalling one two minutes: the
    # per-image deadline (3 s) is what ends them.
    assert time.monotonic() - started < 110

    rows = shard_results(storage).set_index("url")
    for kind, path in hostile.items():
        assert rows.loc[f"{demo_web.url}{path}", "reason"] == EXPECTED_HOSTILE_REASON[kind], kind
    assert set(rows.loc[good, "reason"]) == {"success"}
    counts = result.counts
    failures = sum(v for k, v in counts.items() if k.startswith("failed_"))
    assert counts["successes"] + failures == counts["candidates"] == len(urls)
    assert counts["successes"] == len(good)


def test_ssrf_guard_refuses_loopback_before_any_request(demo_web, tmp_root):
    cfg = PipelineConfig.model_validate(
        {"storage": {"root": str(tmp_root)}, "download": {"processes_count": 1}}
    )
    storage = Storage(cfg.storage)
    port = demo_web.url.rsplit(":", 1)[1]
    urls = [f"{demo_web.url}/img/fashion/00000.png", f"http://localhost:{port}/img/x.png"]
    write_candidates(storage, urls)
    requested = demo_web.requests["/img/fashion/00000.png"]
    result = download(cfg, storage)
    assert result.counts["successes"] == 0
    refused = pd.read_parquet(storage.uri("download", "_input", "refused.parquet"))
    assert sorted(refused["url"]) == sorted(urls)
    assert result.counts["failed_ssrf_refused"] == 2
    assert demo_web.requests["/img/fashion/00000.png"] == requested  # no request was made


def test_blocked_hosts_are_never_fetched_even_through_a_redirect(demo_web, tmp_root):
    """curate.url_blocklist dropped rows whose URL or page was on a listed domain, but the
    fetch followed redirects anywhere: an image on an allowed host that redirects to a
    blocked one was fetched from it and kept. The fetch now refuses every hop to a listed
    domain, before any lookup or request (``url_blocked``)."""
    cfg = PipelineConfig.model_validate({
        "storage": {"root": str(tmp_root)},
        "crawl": {"allow_private_networks": True},
        "download": {"processes_count": 1, "thread_count": 4, "timeout": 3, "image_size": 32},
        "curate": {"url_blocklist": [SSRF_TEST_NAME]},
    })  # fmt: skip
    storage = Storage(cfg.storage)
    port = demo_web.url.rsplit(":", 1)[1]
    via_redirect = f"{demo_web.url}{SSRF_ROUTES['redirect_to_name']}"
    direct = f"http://cdn.{SSRF_TEST_NAME}:{port}/img/fashion/00000.png"
    good = fashion_urls(demo_web, 2)
    write_candidates(storage, [via_redirect, direct, *good])
    result = download(cfg, storage)
    rows = shard_results(storage).set_index("url")
    refused = pd.read_parquet(storage.uri("download", "_input", "refused.parquet"))
    reasons = {**dict(zip(refused["url"], refused["reason"], strict=True)), **rows["reason"]}
    assert reasons[via_redirect] == "url_blocked"
    assert reasons[direct] == "url_blocked"  # refused before a DNS lookup, not dns_error
    assert {reasons[u] for u in good} == {"success"}
    assert result.counts["failed_url_blocked"] == 2


def test_pixel_cap_refuses_a_bomb_from_its_header(monkeypatch):
    bomb = bomb_png()  # 20,000 x 20,000 px in a few hundred KB
    decoded: list[object] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self))
    with pytest.raises(FetchRefused, match="too_many_pixels"):
        check_image(bomb, max_pixels=89_478_485)
    assert decoded == []  # refused from the header: not one pixel decoded


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "JPEG", "WEBP", "TIFF", "BMP"])
def test_pixel_cap_reads_the_size_every_format_declares(fmt):
    """PNG and GIF sizes come from fixed header offsets, the rest from PIL: both must see
    the size the image declares."""
    buf = io.BytesIO()
    Image.new("RGB", (300, 40)).save(buf, format=fmt)
    data = buf.getvalue()
    assert png_or_gif_size(data) == ((300, 40) if fmt in ("PNG", "GIF") else None)
    check_image(data, max_pixels=12_000)
    with pytest.raises(FetchRefused, match="too_many_pixels: 300x40 = 12000 px"):
        check_image(data, max_pixels=11_999)


def test_truncated_and_empty_bodies_are_refused():
    with pytest.raises(FetchRefused, match="empty"):
        check_image(b"", max_pixels=100)
    with pytest.raises(FetchRefused, match="truncated"):
        check_image(b"\xff\xd8\xff\xe0" + b"\x00" * 100, max_pixels=100)


def test_failure_reasons_are_stable_names():
    assert failure_reason("failed_to_download", "HTTP Error 404: Not Found") == "http_404"
    assert failure_reason("failed_to_download", "HTTP Error 503: Busy") == "http_5xx"
    assert failure_reason("failed_to_resize", "cv2 error") == "not_an_image"
    assert failure_reason("failed_to_download", "timeout: timed out") == "timeout"


_RUN_DOWNLOAD = """
import sys
from tasks.core.config import load_config
from tasks.download.stage import download
from tasks.core.storage import Storage
cfg = load_config(sys.argv[1])
download(cfg, Storage(cfg.storage))
"""


def _run_download(config_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _RUN_DOWNLOAD, str(config_path)],
        cwd=Path(__file__).resolve().parents[2],
        start_new_session=True,  # so the kill reaches img2dataset's worker processes too
    )


def test_the_captions_length_as_found_reaches_the_download_parquet(demo_web, tmp_root):
    """The crawl cuts long captions and records their length as found, which curate's
    too-long rule reads from the download parquet. Candidates without that column (written
    by an older crawl or another tool) get NULL there, not an error."""
    cfg = make_config(tmp_root)
    storage = Storage(cfg.storage)
    urls = fashion_urls(demo_web, 4)
    write_candidates(storage, urls[:2])
    frame = pd.DataFrame({"url": urls[2:], "caption": ["a coat " * 10, "a bag"],
                          "page_url": ["http://127.0.0.1/page.html"] * 2, "source": ["site"] * 2,
                          "caption_original_chars": [5000, 5]})  # fmt: skip
    storage.write_bytes(storage.uri("crawl", "candidates-00001.parquet"), frame.to_parquet())
    download(cfg, storage)
    files = [f for f in storage.glob("download/*.parquet") if re.search(r"/\d+\.parquet$", f)]
    assert {str(pq.read_schema(f).field("caption_original_chars").type) for f in files} == {"int64"}
    rows = pd.concat(pd.read_parquet(f) for f in files).set_index("url")
    assert set(rows["status"]) == {"success"}
    found = rows["caption_original_chars"]
    assert found[urls[2]] == 5000 and found[urls[3]] == 5
    assert found[urls[:2]].isna().all()


def test_candidate_order_depends_on_the_pairs_not_on_the_crawl(tmp_path):
    """Two crawls of one web list the same pairs in different orders (the crawler's workers
    write pairs as pages finish: measured on the test web, runs differed from the 37th pair
    on). Download's list, whose positions become the sample keys, is the same for both."""
    urls = [f"http://127.0.0.{1 + i % 3}/img/{i}.png" for i in range(200)]
    captions = [f"caption {i % 50}" for i in range(200)]  # repeated captions, other URLs
    lists = []
    for name, order in (("a", range(200)), ("b", np.random.default_rng(1).permutation(200))):
        storage = Storage(make_config(tmp_path / name).storage)
        write_candidates(storage, [urls[i] for i in order], [captions[i] for i in order])
        lists.append(read_candidates(storage))
    assert lists[0].equals(lists[1])
    assert sorted(lists[0]["url"]) == sorted(urls)
    assert list(lists[0]["url"]) != urls  # hosts interleaved, not in crawl (page) order
    cfg = make_config(tmp_path / "a")
    assert input_fingerprint(lists[0], cfg, "crawl-1") == input_fingerprint(
        lists[1], cfg, "crawl-1"
    )
    assert input_fingerprint(lists[0], cfg, "crawl-1") != input_fingerprint(
        lists[0], cfg, "crawl-2"
    )


def test_a_changed_input_or_force_clears_the_old_output(demo_web, tmp_root):
    """--force: everything is fetched again, into new files. New input: no row of the old list
    is left. (Same input, not forced, resumes: test_killed_download_resumes_to_the_same_samples.)"""
    cfg = make_config(tmp_root, number_sample_per_shard=10)
    storage = Storage(cfg.storage)
    first, second = fashion_urls(demo_web, 40)[:20], fashion_urls(demo_web, 40)[20:]

    def fetched(urls: list[str]) -> int:
        return sum(demo_web.requests[urlsplit(u).path] for u in urls)

    def files() -> dict[str, tuple[int, int]]:
        return {t.name: (t.stat().st_ino, t.stat().st_mtime_ns)
                for t in tmp_root.glob("download/*.tar")}  # fmt: skip

    write_candidates(storage, first)
    download(cfg, storage)
    stamps, requests = files(), fetched(first)
    assert len(stamps) == 2 and requests >= 20
    download(cfg, storage, RunContext(force=True))
    assert fetched(first) == requests + 20
    assert not set(files().values()) & set(stamps.values())  # every file written anew
    write_candidates(storage, second)
    download(cfg, storage)
    assert sorted(shard_results(storage)["url"]) == sorted(second)


def _write_config(root: Path, path: Path) -> Path:
    cfg = make_config(root, number_sample_per_shard=20, thread_count=2)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def test_killed_download_resumes_to_the_same_samples(demo_web, tmp_path):
    urls = fashion_urls(demo_web, 160)  # 8 shards of 20
    baseline_root, killed_root = tmp_path / "baseline", tmp_path / "killed"
    for root in (baseline_root, killed_root):
        write_candidates(Storage(make_config(root).storage), urls)

    proc = _run_download(_write_config(killed_root, tmp_path / "killed.yaml"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(killed_root.glob("download/*_stats.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted(killed_root.glob("download/*_stats.json"))
    assert 2 <= len(finished) < 8, "the kill must land mid-run"
    # What the finished shards are on disk, and which URLs they hold.
    tars = [Path(str(f).replace("_stats.json", ".tar")) for f in finished]
    before = {t.name: (t.stat().st_ino, t.stat().st_mtime_ns) for t in tars}
    done_paths = [
        urlsplit(u).path
        for t in tars
        for u in pd.read_parquet(t.with_suffix(".parquet"), columns=["url"])["url"]
    ]
    requested_before = {p: demo_web.requests[p] for p in done_paths}

    assert _run_download(_write_config(killed_root, tmp_path / "killed.yaml")).wait() == 0
    # A resume, not a re-download: finished shards untouched and their images not fetched
    # again (a full re-download would also end with the same rows).
    assert {t.name: (t.stat().st_ino, t.stat().st_mtime_ns) for t in tars} == before
    assert {p: demo_web.requests[p] for p in done_paths} == requested_before
    assert len(done_paths) == 20 * len(tars)
    assert _run_download(_write_config(baseline_root, tmp_path / "baseline.yaml")).wait() == 0

    resumed = shard_results(Storage(make_config(killed_root).storage))
    baseline = shard_results(Storage(make_config(baseline_root).storage))
    columns = ["key", "url", "status"]
    resumed_rows = resumed[columns].sort_values("key").reset_index(drop=True)
    assert resumed_rows.equals(baseline[columns].sort_values("key").reset_index(drop=True))
    assert resumed["key"].is_unique and len(resumed) == len(urls)
    assert set(resumed["status"]) == {"success"}
