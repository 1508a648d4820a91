"""The crawl flow through Prefect (one test harness per session) on the demo web."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from flows.crawl import crawl_flow
from tasks.core.config import PipelineConfig


def config(demo_web, root: Path, **crawl) -> dict:
    options = {
        "seeds": [demo_web.url + "/"],
        "allow_private_networks": True,
        "timeout": 1.0,
        "max_page_bytes": 1_000_000,
        **crawl,
    }
    cfg = PipelineConfig.model_validate({"storage": {"root": str(root)}, "crawl": options})
    return cfg.model_dump(mode="json")


def test_crawl_flow_outputs_manifest_skip_and_force(prefect_harness, demo_web, tmp_root) -> None:
    first = crawl_flow(config=config(demo_web, tmp_root, rows_per_file=100))
    assert first["skipped"] is False
    counts = first["counts"]
    files = sorted((tmp_root / "crawl").glob("candidates-*.parquet"))
    assert [f.name for f in files] == [f"candidates-{n:05d}.parquet" for n in range(4)]
    frame = pd.concat(pd.read_parquet(f) for f in files)
    assert len(frame) == counts["pairs_after_dedup"]
    # Every pair is kept or dropped as a duplicate; the planted repeats are the duplicates.
    assert counts["pairs_found"] == len(demo_web.planted["pairs"])
    assert counts["pairs_found"] == counts["pairs_after_dedup"] + counts["duplicates_dropped"]
    assert counts["duplicates_dropped"] == len(demo_web.planted["repeated_pairs"])
    assert not frame.duplicated(["url", "caption"]).any()
    assert frame["caption"].str.len().max() == 1000 and counts["captions_truncated"] == 1
    cut = frame[frame["caption_original_chars"] > frame["caption"].str.len()]
    assert len(cut) == 1 and cut["caption_original_chars"].iloc[0] > 1000
    assert set(frame["source"]) == {"site"}
    errors = pd.read_parquet(tmp_root / "crawl" / "errors.parquet")
    assert len(errors) == counts["pages_failed"] == counts["errors_reported"]
    assert set(errors["reason"]) >= {"robots_disallowed", "timeout", "redirect_loop", "http_404"}
    manifest = tmp_root / "_manifests" / "crawl.json"
    assert manifest.exists()

    again = crawl_flow(config=config(demo_web, tmp_root, rows_per_file=100))
    assert again["skipped"] is True and again["finished_at"] == first["finished_at"]

    forced = crawl_flow(config=config(demo_web, tmp_root, rows_per_file=100), force=True)
    assert forced["skipped"] is False and forced["finished_at"] != first["finished_at"]
    assert forced["counts"]["pairs_after_dedup"] == counts["pairs_after_dedup"]

    # A config change reruns by itself; fewer output files leave no stale ones behind.
    bigger = crawl_flow(config=config(demo_web, tmp_root, rows_per_file=10_000))
    assert bigger["skipped"] is False
    assert [f.name for f in (tmp_root / "crawl").glob("candidates-*.parquet")] == [
        "candidates-00000.parquet"
    ]
