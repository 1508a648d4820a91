"""Content addressing: the shard stage copies an image only when its bytes hash to the sha256
that curate recorded for the sample, and never writes a mismatched caption/image pair."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from model.tario import SampleWriter, open_samples
from tasks.shard.stage import ShardInputError
from tests.shard.conftest import load_kept
from tests.shard.test_shard_local import read_shards, run


def swap_images(tar_path: Path, first: str, second: str) -> None:
    """Rewrite a download tar with two samples' image bytes exchanged: what positional
    img2dataset keys give when the web changed between curate and shard."""
    samples = {s.pop("__key__"): s for s in open_samples(str(tar_path))}
    samples[first]["jpg"], samples[second]["jpg"] = samples[second]["jpg"], samples[first]["jpg"]
    with tar_path.open("wb") as stream, SampleWriter(stream) as tar:
        for key, members in samples.items():
            tar.write(key, {ext: data for ext, data in members.items() if ext != "__url__"})


def shards_are_consistent(root: Path) -> int:
    """Every written sample's image hashes to its .json image_sha256, which is curate's, and
    the .json carries download's sha256 too; returns the number of samples."""
    curated = pd.read_parquet(root / "curate" / "samples.parquet").set_index("key")
    count = 0
    for samples in read_shards(root).values():
        for key, members in samples.items():
            meta = json.loads(members["json"])
            found = hashlib.sha256(members["jpg"]).hexdigest()
            assert found == meta["image_sha256"] == curated.loc[key, "image_sha256"]
            assert meta["sha256"] == curated.loc[key, "sha256"]
            count += 1
    return count


def test_shard_json_carries_the_checked_sha256(local_root: Path) -> None:
    run(local_root)
    assert shards_are_consistent(local_root) == len(load_kept(local_root))


def test_swapped_download_images_are_refused_naming_the_sample(local_root: Path) -> None:
    kept = load_kept(local_root)
    tar_name = kept["download_shard"].iloc[0]
    pair = kept[kept["download_shard"] == tar_name].iloc[:2]
    swap_images(local_root / "download" / tar_name, *pair["key"])
    with pytest.raises(ShardInputError, match="curate recorded") as error:
        run(local_root, samples_per_shard=3)
    message = str(error.value)
    named = [row for row in pair.itertuples() if f"'{row.key}'" in message]
    assert len(named) == 1 and named[0].url in message and tar_name in message
    assert not (local_root / "shards" / "manifest.json").exists()
    shards_are_consistent(local_root)
    written = {key for samples in read_shards(local_root).values() for key in samples}
    assert named[0].key not in written


def test_a_kept_row_without_sha256_is_refused(local_root: Path) -> None:
    path = local_root / "curate" / "samples.parquet"
    samples = pd.read_parquet(path)
    key = samples.loc[samples["keep"], "key"].iloc[2]
    samples.loc[samples["key"] == key, "image_sha256"] = None
    samples.to_parquet(path, index=False)
    with pytest.raises(ShardInputError, match=f"without a sha256 of their image.*'{key}'"):
        run(local_root)
    assert not list((local_root / "shards").glob("*.tar"))
