"""Loader benchmark: our WebDataset loader vs OpenCLIP's ``get_wds_dataset``, side by side.

Both read the same Fashion-MNIST JPEG shards with the same batch size and worker count and
produce what a training step needs: augmented 28 px images and token ids (context 32). Ours
ships uint8 pixels (normalised on the device by the step); OpenCLIP's ships float tensors.
Also measured in the same run: the rate at which one training process consumes samples
(clipflow-tiny, fp32, one thread), to show the loader is not the bottleneck.

    .venv/bin/python bench/bench_loader.py [--quick]

Writes bench/results/loader.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.train_shards import write_fashion_shards  # noqa: E402
from model import ClipLoss, create_model  # noqa: E402
from model.data import LoaderConfig, TrainLoader, read_shard_list  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "loader.json"


def rate(next_batch: Any, batches: int, batch_size: int) -> float:
    """Samples/s over ``batches`` batches after one warm-up batch (worker start-up)."""
    next_batch()
    started = time.perf_counter()
    for _ in range(batches):
        next_batch()
    return batches * batch_size / (time.perf_counter() - started)


def ours(folder: Path, batch: int, workers: int, batches: int) -> float:
    shards, sizes = read_shard_list(str(folder), {})
    cfg = LoaderConfig(shards, sizes, batch, 28, 32, workers=workers, sampling="resampled")
    return rate(TrainLoader(cfg, rank=0, world=1).next_batch, batches, batch)


def open_clip_loader(folder: Path, batch: int, workers: int, batches: int) -> float:
    import open_clip
    from open_clip_train.data import get_wds_dataset

    names = sorted(p.name for p in folder.glob("*.tar"))
    args = SimpleNamespace(
        train_data=" ".join(str(folder / n) for n in names).replace(" ", "::"),
        dataset_resampled=True,
        train_num_samples=batch * (batches + 1) * max(workers, 1) * 4,
        train_data_upsampling_factors=None,
        seed=0,
        batch_size=batch,
        workers=workers,
        world_size=1,
    )
    preprocess = open_clip.image_transform(28, is_train=True)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=32)
    data = get_wds_dataset(args, preprocess, is_train=True, tokenizer=tokenizer)
    iterator = iter(data.dataloader)
    return rate(lambda: next(iterator), batches, batch)


def train_consumption(batch: int, steps: int) -> float:
    """Samples/s one training process consumes (forward, backward, AdamW; no data)."""
    model = create_model("clipflow-tiny")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    loss_fn = ClipLoss()
    images, texts = torch.randn(batch, 3, 28, 28), torch.randint(1, 4000, (batch, 32))
    texts[:, 12] = 49407

    def step() -> None:
        loss = loss_fn(*model(images, texts))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return rate(step, steps, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    samples, batches, batch = (2000, 15, 128) if args.quick else (8000, 40, 256)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "shards"
        write_fashion_shards(folder, samples, samples // 8)
        for workers in (0, 1, 2):
            theirs = open_clip_loader(folder, batch, workers, batches)
            mine = ours(folder, batch, workers, batches)
            rows.append({"workers": workers, "ours": mine, "open_clip": theirs,
                         "ratio": mine / theirs})  # fmt: skip
    consumed = train_consumption(batch, 5 if args.quick else 10)
    print(f"loader samples/s, batch {batch}, 28 px JPEG shards (shared 2-core machine)")
    print(f"{'workers':>8} {'ours':>10} {'open_clip':>10} {'ratio':>7}")
    for r in rows:
        print(f"{r['workers']:>8} {r['ours']:>10.0f} {r['open_clip']:>10.0f} {r['ratio']:>6.2f}x")
    one_worker = rows[1]["ours"]
    print(f"training step consumes {consumed:.0f} samples/s per process; one loader worker "
          f"supplies {one_worker / consumed:.1f}x that")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(
        {"batch": batch, "rows": rows, "train_consumes_samples_per_s": consumed,
         "loader_over_consumption_1_worker": one_worker / consumed, "quick": args.quick},
        indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
