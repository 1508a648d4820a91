"""Our shards through OpenCLIP's own training loader and through plain webdataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import webdataset as wds
from open_clip import tokenize
from open_clip_train.data import get_wds_dataset
from torchvision import transforms

from tasks.core.config import PipelineConfig
from tasks.core.storage import Storage
from tasks.shard.stage import shard
from tests.shard.conftest import load_kept, local_config

PREPROCESS = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])


def make_shards(root: Path) -> tuple[str, int]:
    """Shard ``root``; return OpenCLIP's brace pattern and the sample count."""
    cfg: PipelineConfig = local_config(root, samples_per_shard=8)
    result = shard(cfg, Storage(cfg.storage))
    return result.outputs["pattern"], result.counts["samples"]


def openclip_args(pattern: str, resampled: bool) -> argparse.Namespace:
    """The fields of OpenCLIP's argparse namespace that get_wds_dataset reads."""
    return argparse.Namespace(
        train_data=pattern,
        val_data=pattern,
        train_num_samples=None,
        val_num_samples=None,
        train_data_upsampling_factors=None,
        dataset_resampled=resampled,
        seed=0,
        batch_size=4,
        workers=1,
        world_size=1,
    )


@pytest.mark.parametrize("resampled", [False, True])
def test_openclip_training_loader_reads_our_shards(local_root: Path, resampled: bool) -> None:
    pattern, total = make_shards(local_root)
    args = openclip_args(pattern, resampled)
    data = get_wds_dataset(args, PREPROCESS, is_train=True, tokenizer=tokenize)
    # sizes.json is where OpenCLIP takes the epoch's sample count from.
    assert data.dataloader.num_samples == -(-total // args.batch_size) * args.batch_size
    batches = list(data.dataloader)
    assert len(batches) == data.dataloader.num_batches > 0
    for images, texts in batches:
        assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
        assert texts.shape == (4, 77) and bool((texts[:, 0] == 49406).all())


def test_openclip_eval_loader_sees_every_sample_once(local_root: Path) -> None:
    pattern, total = make_shards(local_root)
    args = openclip_args(pattern, resampled=False)
    args.val_num_samples = total
    data = get_wds_dataset(args, PREPROCESS, is_train=False, tokenizer=tokenize)
    assert sum(len(images) for images, _ in data.dataloader) == total


def test_plain_webdataset_reads_every_sample(local_root: Path) -> None:
    pattern, _ = make_shards(local_root)
    kept = load_kept(local_root).set_index("key")
    dataset = wds.WebDataset(pattern, shardshuffle=False).decode("pil")
    seen = {}
    for sample in dataset:
        seen[sample["__key__"]] = sample
        assert sample["jpg"].size == (56, 56)
        assert sample["txt"] == kept.loc[sample["__key__"], "caption"]
        assert sample["json"]["url"] == kept.loc[sample["__key__"], "url"]
    assert sorted(seen) == sorted(kept.index)
    sizes = json.loads((local_root / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == len(seen)
