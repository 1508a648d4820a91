"""The WebDataset loader on real shards: splitting, exact resume, corrupt data, too few shards."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import model.data
from demo.train_shards import write_fashion_shards
from model.data import (
    DecodedCache,
    LoaderConfig,
    LoaderPosition,
    ShardStream,
    TrainLoader,
    read_shard_list,
    resolve_sampling,
)
from tests.train.conftest import CORRUPT


def loader_config(folder: Path, **kw: object) -> LoaderConfig:
    shards, sizes = read_shard_list(str(folder), {})
    base: dict = {"batch_size": 16, "image_size": 28, "context_length": 32, "shuffle_buffer": 50}
    return LoaderConfig(shards=shards, sizes=sizes, **{**base, **kw})


def test_split_gives_each_reader_its_shards_and_every_sample_once(fashion_shards: Path) -> None:
    cfg = loader_config(fashion_shards, workers=2, shuffle_buffer=0, sampling="split")
    keys: list[str] = []
    for rank in range(2):
        stream = ShardStream(cfg, rank, 2, LoaderPosition.start(2, 2))
        for reader in range(2):
            raw = stream._raw_stream(reader, DecodedCache(0))
            # 4 shards of 150 over 4 readers: one shard each per epoch.
            first_epoch = [next(raw)[0] for _ in range(150)]
            assert len({k.rsplit("/", 2)[0] for k in first_epoch}) == 1
            keys += first_epoch
    assert len(keys) == len(set(keys)) == 600


def test_batches_hold_decoded_images_and_tokens(fashion_shards: Path) -> None:
    loader = TrainLoader(loader_config(fashion_shards, workers=0), rank=0, world=1)
    images, texts = loader.next_batch()
    assert images.shape == (16, 28, 28, 3) and images.dtype == torch.uint8
    assert texts.shape == (16, 32) and texts.dtype == torch.long
    assert 0 < images.float().mean() < 255  # real pixels, not a blank buffer
    assert (texts[:, 0] == 49406).all()  # start-of-text on every caption


def test_resumed_loader_continues_the_exact_stream(fashion_shards: Path) -> None:
    cfg = loader_config(fashion_shards, workers=2, seed=3)
    first = TrainLoader(cfg, rank=1, world=2)
    for _ in range(7):  # odd: the next batch comes from the second worker
        first.next_batch()
    saved = copy.deepcopy(first.position)
    expected = [first.next_batch() for _ in range(5)]
    resumed = TrainLoader(cfg, rank=1, world=2, position=LoaderPosition(**saved.to_dict()))
    for images, texts in expected:
        got_images, got_texts = resumed.next_batch()
        assert torch.equal(got_images, images) and torch.equal(got_texts, texts)


def test_corrupt_samples_are_skipped_and_counted(fashion_shards: Path) -> None:
    cfg = loader_config(fashion_shards, workers=0, batch_size=299, shuffle_buffer=0)
    loader = TrainLoader(cfg, rank=0, world=1)
    loader.next_batch()
    loader.next_batch()  # 598 good samples: the whole epoch of 600
    assert loader.position.raw == [600]
    assert loader.position.skipped == len(CORRUPT)


def test_fewer_shards_than_readers_is_refused_or_resampled(tmp_path: Path) -> None:
    write_fashion_shards(tmp_path, 40, 20)  # 2 shards
    with pytest.raises(ValueError, match=r"2 shards cannot be split over 2 ranks x 2 workers"):
        resolve_sampling("split", 2, world=2, workers=2)
    assert resolve_sampling("auto", 2, world=2, workers=2) == "resampled"
    assert resolve_sampling("auto", 4, world=2, workers=2) == "split"
    # Resampled, every one of 4 readers gets data (no reader waits on an empty stream).
    cfg = loader_config(tmp_path, workers=2, sampling="resampled", batch_size=8)
    for rank in range(2):
        loader = TrainLoader(cfg, rank=rank, world=2)
        for _ in range(4):
            assert loader.next_batch()[0].shape[0] == 8


def test_undecodable_data_fails_loudly_instead_of_stalling(tmp_path: Path) -> None:
    write_fashion_shards(tmp_path, 30, 30, corrupt=range(30))
    loader = TrainLoader(loader_config(tmp_path, workers=0), rank=0, world=1)
    with pytest.raises(RuntimeError, match="no sample decodes"):
        loader.next_batch()


def test_truncated_shard_and_missing_sizes_are_named(tmp_path: Path) -> None:
    write_fashion_shards(tmp_path, 30, 30)
    tar = tmp_path / "000000.tar"
    tar.write_bytes(tar.read_bytes()[:5000])
    loader = TrainLoader(loader_config(tmp_path, workers=0), rank=0, world=1)
    with pytest.raises(RuntimeError, match=r"000000\.tar is truncated"):
        loader.next_batch()
    with pytest.raises(FileNotFoundError, match="sizes.json not found"):
        read_shard_list(str(tmp_path / "nowhere"), {})
    (tmp_path / "sizes.json").write_text(json.dumps([]))
    with pytest.raises(ValueError, match="non-empty mapping"):
        read_shard_list(str(tmp_path), {})


def test_png_and_grayscale_images_decode(tmp_path: Path) -> None:
    import webdataset as wds
    from PIL import Image

    with wds.TarWriter(str(tmp_path / "000000.tar")) as sink:
        for i, mode in enumerate(("L", "RGBA", "P")):
            buf = io.BytesIO()
            Image.new(mode, (40, 30), color=120).save(buf, format="PNG")
            sink.write({"__key__": f"k{i}", "png": buf.getvalue(), "txt": "a grey square"})
    (tmp_path / "sizes.json").write_text(json.dumps({"000000.tar": 3}))
    loader = TrainLoader(loader_config(tmp_path, batch_size=3, workers=0), rank=0, world=1)
    images, _ = loader.next_batch()
    assert images.shape == (3, 28, 28, 3)


def test_decoded_cache_gives_the_same_batches_and_decodes_and_reads_less(
    fashion_shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = {"opens": 0, "reads": 0}
    real_open, real_read = Image.open, model.data._tar_samples

    def counting_open(*args: object, **kwargs: object) -> Image.Image:
        counts["opens"] += 1
        return real_open(*args, **kwargs)

    def counting_read(*args: Any, **kwargs: Any) -> Iterator[Any]:
        counts["reads"] += 1
        return real_read(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    monkeypatch.setattr(model.data, "_tar_samples", counting_read)

    def batches(cache_mb: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], dict]:
        # 3+ epochs of 600 samples (4 shards), random crops and flips drawn per batch.
        cfg = loader_config(fashion_shards, workers=0, batch_size=64, crop_scale=(0.5, 1.0),
                            hflip=True, seed=5, decoded_cache_mb=cache_mb)  # fmt: skip
        loader = TrainLoader(cfg, rank=0, world=1)
        counts.update(opens=0, reads=0)
        out = [loader.next_batch() for _ in range(30)]
        return out, dict(counts)

    plain, plain_counts = batches(0)
    # 1 MiB holds part of it (the 600 decoded 28 px images take 2,352 bytes each): what it
    # does not hold is decoded, or read, each epoch, as without a cache.
    small, small_counts = batches(1)
    # 4 MiB holds every image and every shard: each image is decoded once, each shard read
    # once (the epochs after the first come from memory).
    whole, whole_counts = batches(4)
    for got in (small, whole):
        for (images, texts), (got_images, got_texts) in zip(plain, got, strict=True):
            assert torch.equal(got_images, images) and torch.equal(got_texts, texts)
    epochs = 30 * 64 // 600
    assert plain_counts["opens"] >= 30 * 64 and plain_counts["reads"] >= 4 * epochs
    assert plain_counts["opens"] - 600 >= small_counts["opens"] > 600
    assert small_counts["reads"] <= plain_counts["reads"]
    # (a corrupt image is never kept: it is tried again, and skipped, each epoch)
    assert whole_counts["opens"] <= 600 + len(CORRUPT) * epochs and whole_counts["reads"] == 4


def test_decoded_cache_never_holds_more_than_its_budget() -> None:
    # A shard read while its images are decoded and kept: the images take room meanwhile,
    # so the shard, which fitted when its read began, no longer does at its end.
    cache = DecodedCache(budget=10_000)
    samples = [(f"s/{i}", {"png": b"x" * 1_000, "txt": b"a caption"}) for i in range(5)]
    for name, _ in cache.read_shard("s", iter(samples)):
        cache.put(name, Image.new("L", (40, 25)))  # 1,000 bytes each
    # (the shard's 5,045 bytes fit beside the first four images, not beside all five)
    assert cache.used <= cache.budget
    assert cache.shard("s") is None and cache.get("s/3") is not None
    # With room for both, the shard is kept, in its order.
    roomy = DecodedCache(budget=100_000)
    assert list(roomy.read_shard("s", iter(samples))) == samples
    assert roomy.shard("s") == samples
