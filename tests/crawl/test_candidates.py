"""Candidates streamed to Parquet in bounded batches, and the crawl's accounting identity."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tasks.core.config import PipelineConfig
from tasks.core.storage import Storage
from tasks.crawl.candidates import CandidateWriter
from tasks.crawl.stage import CrawlAccountingError, accounting_violations, crawl
from tests.crawl.hostile_inputs import metadata_record, wat_metadata_json

WHEN = datetime(2024, 3, 1, tzinfo=UTC)


def storage_at(root: Path) -> Storage:
    return Storage(PipelineConfig.model_validate({"storage": {"root": str(root)}}).storage)


def pairs(start: int, stop: int) -> list[tuple[str, str]]:
    return [(f"http://s.example/{i}.png", f"caption {i}") for i in range(start, stop)]


def test_candidates_stream_in_batches_and_files(tmp_root: Path) -> None:
    crawl_dir = tmp_root / "crawl"
    with CandidateWriter(storage_at(tmp_root), 25, 1000, batch_rows=10) as out:
        out.add_pairs(pairs(0, 30), "http://s.example/", WHEN, "site")
        # The first file is complete and visible while the crawl is still going.
        assert [p.name for p in crawl_dir.glob("candidates-*.parquet")] == [
            "candidates-00000.parquet"
        ]
        out.add_pairs(pairs(30, 60), "http://s.example/", WHEN, "site")
    files = sorted(crawl_dir.glob("candidates-*.parquet"))
    assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [25, 25, 10]
    # Written 10 rows at a time (the last batch of a file is what fits in it).
    groups = pq.ParquetFile(files[0]).metadata
    assert [groups.row_group(i).num_rows for i in range(groups.num_row_groups)] == [10, 10, 5]
    frame = pd.concat(pd.read_parquet(f) for f in files)
    assert list(frame["url"]) == [u for u, _ in pairs(0, 60)]
    assert out.counts["pairs_after_dedup"] == out.candidates_written == 60
    assert not list(crawl_dir.glob("*.tmp-*"))


def test_duplicates_and_long_captions(tmp_root: Path) -> None:
    with CandidateWriter(storage_at(tmp_root), 100, 5) as out:
        out.add_pairs([("http://a/1.png", "abcdefgh"), ("http://a/1.png", "abcde")], "p", WHEN, "s")
        out.add_pairs([("http://a/1.png", "abc"), ("http://a/1.pngabc", "")], "p", WHEN, "s")
    frame = pd.read_parquet(tmp_root / "crawl" / "candidates-00000.parquet")
    assert list(zip(frame["url"], frame["caption"], strict=True)) == [
        ("http://a/1.png", "abcde"),
        ("http://a/1.png", "abc"),
        ("http://a/1.pngabc", ""),
    ]
    # The length as found travels on, so curate's too-long rule still sees a cut caption.
    assert list(frame["caption_original_chars"]) == [8, 3, 0]
    assert dict(out.counts) == {
        "pairs_found": 4,
        "pairs_after_dedup": 3,
        "duplicates_dropped": 1,
        "captions_truncated": 1,
        "errors_reported": 0,
    }


def test_a_failed_crawl_publishes_no_partial_file(tmp_root: Path) -> None:
    writer = CandidateWriter(storage_at(tmp_root), 25, 1000, batch_rows=10)
    with pytest.raises(RuntimeError, match="crawl broke"), writer as out:
        out.add_pairs(pairs(0, 40), "http://s.example/", WHEN, "site")
        raise RuntimeError("crawl broke")
    crawl_dir = tmp_root / "crawl"
    # The complete first file stays (no manifest marks the stage done); the open one is gone.
    assert sorted(p.name for p in crawl_dir.iterdir()) == ["candidates-00000.parquet"]


def write_wat(path: Path, pages: int) -> None:
    with open(path, "wb") as fh:
        for n in range(pages):
            page = f"http://w.example/{n}.html"
            images = [f"http://w.example/{n}-{i}.png" for i in range(3)]
            fh.write(
                zlib.compress(metadata_record(page, wat_metadata_json(page, images)), wbits=31)
            )
        fh.write(zlib.compress(metadata_record("http://w.example/bad", b"{"), wbits=31))


def test_stage_streams_many_files_and_adds_up(tmp_path: Path, tmp_root: Path) -> None:
    wat = tmp_path / "many.warc.wat.gz"
    write_wat(wat, 400)
    crawl_cfg = {"wat_files": [str(wat)], "rows_per_file": 500}
    cfg = PipelineConfig.model_validate({"storage": {"root": str(tmp_root)}, "crawl": crawl_cfg})
    result = crawl(cfg, Storage(cfg.storage))
    assert len(result.outputs["candidates"]) == 3  # 1,200 rows, 500 per file
    frame = pd.concat(pd.read_parquet(uri) for uri in result.outputs["candidates"])
    assert len(frame) == result.counts["pairs_after_dedup"] == 1200
    assert result.counts["errors_reported"] == 1
    assert accounting_violations(result.counts, 1200) == []


def test_broken_count_fails_the_stage(
    tmp_path: Path, tmp_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wat = tmp_path / "some.warc.wat.gz"
    write_wat(wat, 3)
    cfg = PipelineConfig.model_validate(
        {"storage": {"root": str(tmp_root)}, "crawl": {"wat_files": [str(wat)]}}
    )
    # An error row lost on its way to errors.parquet.
    monkeypatch.setattr(CandidateWriter, "add_error", lambda self, error: None)
    with pytest.raises(
        CrawlAccountingError,
        match=r"errors_reported \(0\) != pages_failed \(0\) \+ archive_wat_records_failed \(1\)",
    ):
        crawl(cfg, Storage(cfg.storage))


def test_accounting_violations_named() -> None:
    good = {
        "pages_discovered": 5,
        "pages_fetched": 3,
        "pages_failed": 1,
        "pages_failed_timeout": 1,
        "pages_unvisited_max_pages": 1,
        "links_found": 4,
        "links_followed": 4,
        "pairs_found": 7,
        "pairs_found_site": 7,
        "pairs_after_dedup": 6,
        "duplicates_dropped": 1,
        "errors_reported": 1,
    }
    assert accounting_violations(good, 6) == []
    broken = accounting_violations({**good, "pages_failed_timeout": 2, "pairs_found_site": 8}, 5)
    assert broken == [
        "pages_failed (1) != pages_failed_* (2)",
        "pairs_found (7) != pairs_found_site (8) + archive_pairs_found_* (0)",
        "rows written (5) != pairs_after_dedup (6)",
    ]
