"""Fixtures for the evaluate stage: small real benchmark sets and OpenCLIP checkpoints on disk.

Sets are slices of the real offline data written by the same converter as the built-in sets;
checkpoints are OpenCLIP models (random, or trained for a few steps here) saved to disk.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from demo import benchmark_sets, offline_data
from demo.captions import fashion_caption
from model.config import CONFIG_DIR

TINY = "clipflow-tiny-openclip"  # the clipflow-tiny architecture, registered with OpenCLIP


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """One intra-op thread while these tests run: on cores shared with other jobs, OpenMP's
    spinning threads made a training step 6x slower than a single thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST, read once per test process."""
    return offline_data.fashion_mnist(split)


def small_fashion_set(n_test: int = 240, n_train: int = 300) -> benchmark_sets.BenchmarkSet:
    """The first n_test test and n_train train images, as the built-in set writes them."""
    test_x, test_y = fashion_mnist("test")
    train_x, train_y = fashion_mnist("train")
    return benchmark_sets.BenchmarkSet(
        "classification",
        [
            benchmark_sets.Split(
                "test", benchmark_sets.labelled_samples(test_x[:n_test], test_y[:n_test])
            ),
            benchmark_sets.Split(
                "train", benchmark_sets.labelled_samples(train_x[:n_train], train_y[:n_train])
            ),
        ],
        benchmark_sets.FASHION_MNIST_CLASSNAMES,
        benchmark_sets.FASHION_MNIST_TEMPLATES,
    )


@pytest.fixture(scope="package")
def fashion_small(tmp_path_factory) -> Path:
    """240 Fashion-MNIST test images in 3 shards (+ 300 train images), CLIP_benchmark layout."""
    out = tmp_path_factory.mktemp("bench") / "fashion_small"
    benchmark_sets.write_set(out, small_fashion_set(), samples_per_shard=100)
    return out


@pytest.fixture(scope="package")
def emoji_retrieval_small(tmp_path_factory) -> Path:
    """160 real emoji with two captions each, in 2 shards."""
    full = benchmark_sets.emoji_retrieval_set()
    split = benchmark_sets.Split("test", list(full.splits[0].samples)[:160])
    out = tmp_path_factory.mktemp("bench") / "emoji_retrieval_small"
    benchmark_sets.write_set(out, benchmark_sets.BenchmarkSet("retrieval", [split]), 80)
    return out


@pytest.fixture(scope="package")
def openclip_tiny(tmp_path_factory) -> Path:
    """The clipflow-tiny architecture as an OpenCLIP model config JSON (registered)."""
    import open_clip

    folder = tmp_path_factory.mktemp("openclip_cfg")
    path = folder / f"{TINY}.json"
    path.write_text((CONFIG_DIR / "clipflow-tiny.json").read_text())
    open_clip.add_model_config(path)
    return path


@pytest.fixture(scope="package")
def random_checkpoint(one_torch_thread, openclip_tiny, tmp_path_factory) -> Path:
    """A randomly initialised OpenCLIP model, saved as a plain OpenCLIP checkpoint."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(TINY)
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def _train_tiny(model, steps: int, seed: int = 0) -> None:
    """A few contrastive steps on Fashion-MNIST train images with the demo web's captions."""
    import open_clip

    rng = random.Random(seed)
    images, labels = fashion_mnist("train")
    tokenizer = open_clip.get_tokenizer(TINY)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    generator = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        idx = generator.choice(len(images), 64, replace=False)
        pixels = (
            torch.from_numpy(images[idx].copy()).float().div(255).unsqueeze(1).repeat(1, 3, 1, 1)
        )
        names = [offline_data.FASHION_MNIST_CLASSES[i] for i in labels[idx]]
        tokens = tokenizer([fashion_caption(n, rng) for n in names])
        out = model((pixels - mean) / std, tokens)
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.fixture(scope="package")
def trained_checkpoint(one_torch_thread, openclip_tiny, tmp_path_factory) -> Path:
    """The tiny OpenCLIP model after 30 contrastive steps, saved in our train stage's layout
    (``state_dict`` + ``model_config``)."""
    import open_clip

    torch.manual_seed(1)
    model = open_clip.create_model(TINY, output_dict=True)
    _train_tiny(model, steps=30)
    path = tmp_path_factory.mktemp("ckpt") / "trained.pt"
    config = json.loads(openclip_tiny.read_text())
    torch.save({"state_dict": model.state_dict(), "model_config": config}, path)
    return path
