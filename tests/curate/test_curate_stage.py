"""The curate stage body on a real img2dataset download of the planted test web."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.manifest import StageResult
from tasks.core.storage import Storage
from tasks.curate import stage
from tasks.curate.rules import RULES
from tasks.curate.stage import curate
from tests.curate.conftest import DownloadedWeb


@pytest.fixture(scope="module")
def curated(
    downloaded_web: DownloadedWeb, tmp_path_factory: pytest.TempPathFactory
) -> tuple[StageResult, pd.DataFrame, dict[str, Any], Path]:
    root = downloaded_web.root_with_download(tmp_path_factory.mktemp("root"))
    cfg = downloaded_web.config(root)
    result = curate(cfg, Storage(cfg.storage))
    samples = pd.read_parquet(root / "curate" / "samples.parquet")
    summary = json.loads((root / "curate" / "report" / "summary.json").read_text())
    return result, samples, summary, root


def _row(samples: pd.DataFrame, url: str) -> pd.Series:
    rows = samples[samples["url"] == url]
    assert len(rows) >= 1, f"{url} not in samples.parquet"
    return rows.iloc[0]


def test_one_row_per_input_row_and_every_sample_accounted_for(curated, downloaded_web):
    result, samples, summary, root = curated
    inputs = sum(len(pd.read_parquet(p)) for p in (root / "download").glob("0*.parquet"))
    assert len(samples) == inputs == summary["input"] == result.counts["input"]
    assert summary["kept"] + sum(summary["dropped_by_reason"].values()) == summary["input"]
    assert summary["kept"] == int(samples["keep"].sum()) == result.counts["kept"]
    assert summary["funnel"][-1]["remaining"] == summary["kept"]
    for rule in RULES:
        first = samples["reasons"].map(lambda r, rule=rule: len(r) > 0 and r[0] == rule).sum()
        assert result.counts[f"dropped_{rule}"] == summary["dropped_by_reason"][rule] == first
    assert (samples["keep"] == samples["reasons"].map(len).eq(0)).all()
    assert set(samples["download_shard"]) == {p.name for p in (root / "download").glob("0*.tar")}


def test_planted_exact_and_near_duplicates_found_without_false_merges(curated, downloaded_web):
    _, samples, _, _ = curated
    planted = downloaded_web.planted
    cases = [
        (planted.exact_copies, "duplicate_sha256"),
        (planted.near_copies, "near_duplicate"),
        (planted.caption_image_copy, "duplicate_caption_image"),
    ]
    in_pairs = set()
    for copies, reason in cases:
        for copy, original in copies.items():
            pair = [_row(samples, copy), _row(samples, original)]
            kept = [row for row in pair if row["keep"]]
            dropped = [row for row in pair if not row["keep"]]
            # The survivor is the larger image (then the lower key), whichever was planted.
            assert len(kept) == 1 and len(dropped) == 1, (copy, [list(r["reasons"]) for r in pair])
            assert list(dropped[0]["reasons"]) == [reason]
            assert dropped[0]["duplicate_of"] == kept[0]["key"]
            in_pairs |= {copy, original}
    for url in planted.distinct:
        row = _row(samples, url)
        if url not in in_pairs:
            assert row["keep"], (url, list(row["reasons"]))
            assert row["duplicate_of"] is None
    assert samples["drop_near_duplicate"].sum() == len(planted.near_copies)
    assert samples["drop_duplicate_sha256"].sum() == len(planted.exact_copies)
    dynamic = samples[samples["url"] == planted.dynamic_url]
    assert len(dynamic) == 2 and dynamic["keep"].sum() == 1
    dropped = dynamic[~dynamic["keep"]].iloc[0]
    assert list(dropped["reasons"]) == ["duplicate_url"]
    assert dropped["duplicate_of"] == dynamic[dynamic["keep"]].iloc[0]["key"]


def test_planted_bad_captions_and_images_dropped_for_the_right_reason(curated, downloaded_web):
    _, samples, _, _ = curated
    for url, reason in downloaded_web.planted.bad.items():
        row = _row(samples, url)
        assert not row["keep"], url
        assert row["reasons"][0] == reason, (url, list(row["reasons"]))
    failed = samples[samples["status"] != "success"]
    assert (failed["reasons"].map(lambda r: r[0]) == "download_failed").all()


def test_decontamination_drops_planted_eval_copies(curated, downloaded_web):
    _, samples, summary, _ = curated
    for url in downloaded_web.planted.eval_copies:
        row = _row(samples, url)
        assert not row["keep"] and "eval_contamination" in row["reasons"]
        assert row["eval_match"].startswith("fmnist/")
    assert summary["eval_contaminated"] == len(downloaded_web.planted.eval_copies)
    assert samples["eval_match"].notna().sum() == len(downloaded_web.planted.eval_copies)


def test_output_contract_columns_and_types(curated):
    _, samples, _, root = curated
    for column in ("key", "url", "caption", "page_url", "source", "download_shard", "status",
                   "width", "height", "original_width", "original_height", "sha256", "phash",
                   "language", "clip_score", "duplicate_of", "keep", "reasons"):  # fmt: skip
        assert column in samples.columns, column
    schema = pq.read_schema(root / "curate" / "samples.parquet")
    assert schema.field("phash").type == pa.binary()  # 8 bytes a row: never a lossy float
    assert "thumb" not in schema.names  # a working column
    assert schema.field("reasons").type == pa.list_(pa.string())
    assert schema.field("keep").type == pa.bool_()
    kept = samples[samples["keep"]]
    assert kept["key"].is_unique and kept["phash"].map(len).eq(8).all()
    assert kept["caption"].str.strip().str.len().gt(0).all()
    assert all(c in samples.columns for c in (f"drop_{rule}" for rule in RULES))


def test_report_files_and_gate_result(curated):
    result, _, summary, root = curated
    report = root / "curate" / "report"
    for name in ("summary.json", "funnel.png", "caption_length.png", "image_size.png",
                 "duplicates.png", "data_docs/index.html"):  # fmt: skip
        path = report / name
        assert path.is_file() and path.stat().st_size > 0, name
    assert (report / "funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["gate"]["success"] is True
    assert {e["expectation"] for e in summary["gate"]["expectations"]} >= {
        "expect_column_values_to_be_unique",
        "expect_column_mean_to_be_between",
        "expect_column_values_to_not_be_null",
    }
    html = (report / "data_docs" / "index.html").read_text()
    assert "clipflow-curate" in html
    assert result.outputs["report"]["data_docs"].endswith("data_docs/index.html")


def test_eval_thumbnails_are_cached_by_content(curated, downloaded_web, tmp_path, monkeypatch):
    _, _, _, root = curated
    cached = list((root / "curate" / "_eval_thumbs").glob("fmnist-*.npz"))
    assert len(cached) == 1  # written by the curate run
    cfg = downloaded_web.config(tmp_path)
    fresh_thumbs, fresh_labels = stage.eval_image_thumbnails(cfg, Storage(cfg.storage))

    def no_decoding(image):
        raise AssertionError("a cached evaluation image was decoded again")

    monkeypatch.setattr(stage, "image_thumbnail", no_decoding)
    thumbs, labels = stage.eval_image_thumbnails(cfg, Storage(cfg.storage))
    assert labels == fresh_labels and len(labels) > 0
    np.testing.assert_array_equal(thumbs, fresh_thumbs)
    eval_tar = next(Path(downloaded_web.eval_dir).glob("*/*.tar"))
    changed = tmp_path / "changed" / "test"
    changed.mkdir(parents=True)
    (changed / eval_tar.name).write_bytes(eval_tar.read_bytes() + b"\0" * 512)
    moved = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={
        "datasets": [cfg.evaluate.datasets[0].model_copy(update={"path": str(changed.parent)})]
    })})  # fmt: skip
    with pytest.raises(AssertionError, match="decoded again"):  # other bytes: a new key
        stage.eval_image_thumbnails(moved, Storage(moved.storage))
