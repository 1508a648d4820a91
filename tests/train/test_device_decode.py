"""JPEGs decoded as a batch on a torch device (``train.decode_device: cuda``): on the CPU the
same code path (torchvision's decoder, torch's float resize) must give the readers' batches
(PIL's decoder, torch's uint8 resize), both PIL's resize to within rounding; asking for a
GPU where none is visible is refused before training starts."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from demo.offline_data import emoji, fashion_mnist
from demo.train_shards import web_image
from model.data import LoaderConfig, TrainLoader, _crop_box, read_shard_list, resize_crop
from model.tario import SampleWriter
from model.train import Distributed, train
from model.train_config import TrainRun
from tasks.core.config import load_config
from tasks.core.storage import Storage
from tasks.train import launcher


def web_shard(folder: Path) -> Path:
    """One shard of 256 px web-style images: real Fashion-MNIST and emoji pictures upscaled
    and saved as JPEG at quality 80 (and one PNG, which readers always decode)."""
    images, _ = fashion_mnist("test")
    pictures = [Image.fromarray(images[i]) for i in range(10)]
    pictures += [Image.open(e.path) for e in emoji()[:10]]
    folder.mkdir()
    with open(folder / "000000.tar", "wb") as stream, SampleWriter(stream) as sink:
        for i, picture in enumerate(pictures):
            buf = io.BytesIO()
            kind = "png" if i == 3 else "jpg"
            web_image(picture, 256).save(buf, format="PNG" if kind == "png" else "JPEG", quality=80)
            sink.write(f"{i:04d}", {kind: buf.getvalue(), "txt": f"picture {i}".encode()})
    (folder / "sizes.json").write_text(json.dumps({"000000.tar": len(pictures)}))
    return folder


def test_the_uint8_resize_is_pils_to_within_rounding() -> None:
    images, _ = fashion_mnist("test")
    rng = random.Random(0)
    for i in range(8):
        image = web_image(Image.fromarray(images[i]), 256)
        box = _crop_box(rng, 256, 256, (0.5, 1.0))
        want = np.asarray(image.resize((224, 224), Image.Resampling.BICUBIC, box=box))
        diff = np.abs(resize_crop(image, box, 224).astype(int) - want)
        assert diff.max() <= 8 and diff.mean() < 0.02


def test_batched_tensor_decode_gives_the_readers_batches(tmp_path: Path) -> None:
    shards, sizes = read_shard_list(str(web_shard(tmp_path / "shards")), {})
    base = LoaderConfig(shards, sizes, batch_size=10, image_size=224, context_length=16,
                        shuffle_buffer=0, crop_scale=(0.5, 1.0), hflip=True, seed=1)  # fmt: skip
    pil = TrainLoader(base, rank=0, world=1)
    tensor = TrainLoader(LoaderConfig(**{**base.__dict__, "decode_device": "cpu"}), 0, 1)
    for batch in range(2):
        (want, want_texts), (got, got_texts) = pil.next_batch(), tensor.next_batch()
        assert torch.equal(got_texts, want_texts) and got.shape == want.shape == (10, 224, 224, 3)
        # Same decoder output (libjpeg-turbo both ways) and the same bicubic kernel: only
        # the rounding differs, by a few levels on rare edge pixels.
        diff = (got.int() - want.int()).abs()
        assert diff.max() <= 8 and diff.float().mean() < 0.02
        if batch == 0:
            assert torch.equal(got[3], want[3])  # the PNG: decoded by the reader either way


def test_cuda_decode_without_a_gpu_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    no_gpu = "train.decode_device is 'cuda' but no CUDA GPU is visible"
    run = TrainRun(shards=str(tmp_path / "shards"), output=str(tmp_path / "out"),
                   decode_device="cuda")  # fmt: skip
    with pytest.raises(ValueError, match=no_gpu):
        train(run, Distributed(0, 1, torch.device("cpu")))
    assert not (tmp_path / "out").exists()  # nothing built or written
    cfg = load_config({"storage": {"root": str(tmp_path)}, "train": {"decode_device": "cuda"}})
    with pytest.raises(ValueError, match=no_gpu):
        launcher.train(cfg, Storage(cfg.storage))
    assert not (tmp_path / "train").exists()  # torchrun never started
    shards, sizes = read_shard_list(str(web_shard(tmp_path / "shards")), {})
    with pytest.raises(ValueError, match=no_gpu):
        TrainLoader(LoaderConfig(shards, sizes, 4, 224, 16, decode_device="cuda"), 0, 1)


def test_a_jpeg_that_fails_on_the_device_leaves_no_caption_with_another_image(tmp_path: Path):
    """A JPEG whose header parses (so the reader leaves it to the device) but whose data is
    cut short: its slot is refilled from a decoded sample, image *and* caption, never the
    image alone."""
    folder = web_shard(tmp_path / "shards")
    tar = folder / "000000.tar"
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar) as archive:
        for member in archive.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = archive.extractfile(member).read()  # type: ignore[union-attr]
    with open(tar, "wb") as stream, SampleWriter(stream) as sink:
        for key, members in samples.items():
            if key == "0005":
                sos = members["jpg"].index(b"\xff\xda")
                members = {**members, "jpg": members["jpg"][: sos + 20]}  # header intact
            sink.write(key, members)
    shards, sizes = read_shard_list(str(folder), {})
    loader = TrainLoader(LoaderConfig(shards, sizes, batch_size=20, image_size=224,
                                      context_length=16, shuffle_buffer=0,
                                      decode_device="cpu"), 0, 1)  # fmt: skip
    images, texts = loader.next_batch()
    assert loader.position.skipped == 1
    pairs = [
        (i, j) for i in range(20) for j in range(i + 1, 20) if torch.equal(images[i], images[j])
    ]
    assert pairs, "the failed slot holds a copy of a decoded image"
    for i, j in pairs:
        assert torch.equal(texts[i], texts[j]), (i, j)
