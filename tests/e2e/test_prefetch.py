"""The pipeline's prefetch of decontamination's evaluation thumbnails (flows.pipeline): when
it starts, what it caches, and that a failure is left for curate to report."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from flows.pipeline import _await_prefetch, prefetch_eval_thumbnails
from tasks.core.config import PipelineConfig
from tasks.core.storage import Storage
from tasks.curate.stage import eval_image_thumbnails


def _config(root: Path, eval_path: Path, decontaminate: bool = True) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "storage": {"root": str(root)},
        "curate": {"decontaminate": decontaminate},
        "evaluate": {"datasets": [{"name": "fashion_mnist", "path": str(eval_path),
                                   "task": "zeroshot_classification"}]},
    })  # fmt: skip


def test_prefetch_only_when_curate_decontaminates_after_other_stages(tmp_path, fashion_eval_set):
    cfg = _config(tmp_path, fashion_eval_set)
    assert prefetch_eval_thumbnails(cfg, ["shard", "train"]) is None
    assert prefetch_eval_thumbnails(cfg, ["curate", "shard"]) is None  # nothing to overlap
    off = _config(tmp_path, fashion_eval_set, decontaminate=False)
    assert prefetch_eval_thumbnails(off, ["crawl", "download", "curate"]) is None


def test_prefetch_caches_what_curate_reads(tmp_path, fashion_eval_set, caplog):
    cfg = _config(tmp_path, fashion_eval_set)
    future = prefetch_eval_thumbnails(cfg, ["download", "curate"])
    assert future is not None
    with caplog.at_level(logging.INFO):
        _await_prefetch(future, logging.getLogger("test"))
    assert "evaluation thumbnails: ready" in caplog.text
    storage = Storage(cfg.storage)
    [cache] = storage.glob(storage.uri("curate", "_eval_thumbs", "*.npz"))
    written = Path(cache).stat().st_mtime_ns
    blobs, labels = eval_image_thumbnails(cfg, storage)  # curate's call: from the cache
    assert Path(cache).stat().st_mtime_ns == written
    assert len(blobs) == len(labels) > 0


def test_a_failed_prefetch_only_logs_and_curate_names_the_dataset(tmp_path, caplog):
    cfg = _config(tmp_path, tmp_path / "no_such_benchmark")
    future = prefetch_eval_thumbnails(cfg, ["crawl", "download", "curate"])
    assert future is not None
    with caplog.at_level(logging.WARNING):
        _await_prefetch(future, logging.getLogger("test"))  # does not raise
    assert "the prefetch failed (FileNotFoundError" in caplog.text
    with pytest.raises(FileNotFoundError, match="fashion_mnist"):
        eval_image_thumbnails(cfg, Storage(cfg.storage))
