"""Content addressing from download through curate into the shards, on a real img2dataset
download: curate records the sha256 of every image it reads, refuses a download tar whose
samples disagree with its parquet, and the shard stage refuses a download that changed after
curate ran (img2dataset keys are positional, so a changed web moves images between keys)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from model.tario import SampleWriter, open_samples
from tasks.core.config import load_config
from tasks.core.storage import Storage
from tasks.curate.features import DownloadMismatchError
from tasks.curate.stage import curate
from tasks.shard.stage import ShardInputError, shard
from tests.curate.conftest import DownloadedWeb


def rewrite_tar(tar_path: Path, first: str, second: str, members: tuple[str, ...]) -> None:
    """Rewrite a download tar with ``members`` of two samples exchanged."""
    samples = {s.pop("__key__"): s for s in open_samples(str(tar_path))}
    for ext in members:
        samples[first][ext], samples[second][ext] = samples[second][ext], samples[first][ext]
    with tar_path.open("wb") as stream, SampleWriter(stream) as tar:
        for key, sample in samples.items():
            tar.write(key, {ext: data for ext, data in sample.items() if ext != "__url__"})


def two_samples(samples: pd.DataFrame, kept: bool) -> pd.DataFrame:
    """Two samples with images in the same download tar (kept ones, or any)."""
    rows = samples[samples["image_state"] == "ok"]
    rows = rows[rows["keep"]] if kept else rows
    tar_name = rows["download_shard"].iloc[0]
    return rows[rows["download_shard"] == tar_name].iloc[:2]


@pytest.fixture(scope="module")
def curated_root(downloaded_web: DownloadedWeb, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with a download and curate's outputs, plus the curate manifest shard reads."""
    root = downloaded_web.root_with_download(tmp_path_factory.mktemp("content"))
    cfg = downloaded_web.config(root)
    result = curate(cfg, Storage(cfg.storage))
    (root / "_manifests").mkdir(exist_ok=True)
    manifest = {"stage": "curate", "counts": result.counts}
    (root / "_manifests" / "curate.json").write_text(json.dumps(manifest))
    return root


def test_curate_records_the_sha256_of_every_image(curated_root: Path) -> None:
    samples = pd.read_parquet(curated_root / "curate" / "samples.parquet").set_index("key")
    seen = 0
    for tar in sorted((curated_root / "download").glob("0*.tar")):
        for sample in open_samples(str(tar), extensions=("jpg",)):
            row = samples.loc[sample["__key__"]]
            assert row["image_sha256"] == hashlib.sha256(sample["jpg"]).hexdigest()
            seen += 1
    assert seen == int((samples["image_state"] == "ok").sum()) > 0
    assert samples.loc[samples["keep"], "image_sha256"].notna().all()


def test_shard_refuses_a_download_changed_after_curate(curated_root: Path) -> None:
    samples = pd.read_parquet(curated_root / "curate" / "samples.parquet")
    pair = two_samples(samples, kept=True)
    tar_name = pair["download_shard"].iloc[0]
    rewrite_tar(curated_root / "download" / tar_name, *pair["key"], members=("jpg",))
    cfg = load_config({"storage": {"root": str(curated_root)}, "shard": {"samples_per_shard": 4}})
    with pytest.raises(ShardInputError, match="curate recorded") as error:
        shard(cfg, Storage(cfg.storage))
    named = [row for row in pair.itertuples() if f"'{row.key}'" in str(error.value)]
    assert len(named) == 1 and named[0].url in str(error.value) and tar_name in str(error.value)
    recorded = samples.set_index("key")["image_sha256"]
    for path in sorted((curated_root / "shards").glob("*.tar")):
        for sample in open_samples(str(path)):
            digest = hashlib.sha256(sample["jpg"]).hexdigest()
            assert (
                digest == json.loads(sample["json"])["image_sha256"] == recorded[sample["__key__"]]
            )
    assert not (curated_root / "shards" / "manifest.json").exists()


def test_curate_refuses_a_tar_from_another_download_run(
    downloaded_web: DownloadedWeb, tmp_path: Path
) -> None:
    """Two samples' images and .json moved, as a re-download of a changed web writes them
    under the same keys, beside the old parquet: curate names the sample."""
    root = downloaded_web.root_with_download(tmp_path)
    parquets = sorted((root / "download").glob("0*.parquet"))
    rows = pd.concat(pd.read_parquet(p).assign(download_shard=p.stem + ".tar") for p in parquets)
    rows = rows[rows["status"] == "success"]
    tar_name = rows["download_shard"].iloc[0]
    first, second = rows[rows["download_shard"] == tar_name].iloc[:2].itertuples()
    rewrite_tar(root / "download" / tar_name, first.key, second.key, members=("jpg", "json"))
    cfg = downloaded_web.config(root)
    with pytest.raises(DownloadMismatchError, match=f"sample '{first.key}' \\({first.url}\\)"):
        curate(cfg, Storage(cfg.storage))
