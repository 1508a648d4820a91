"""Loader benchmark: our WebDataset loader vs OpenCLIP's ``get_wds_dataset``, side by side.

Both read the same JPEG shards with the same batch size and worker count and produce what a
training step needs: augmented images and token ids. Ours ships uint8 pixels (normalised on
the device by the step); OpenCLIP's (``open_clip_train.data.get_wds_dataset`` with
``open_clip.image_transform``, as its trainer builds them) ships float tensors. Two sizes:

- ``--image-size 28`` (default): Fashion-MNIST shards at 28 px, context 32; also measured in
  the same run, the rate at which one training process consumes samples (clipflow-tiny, fp32,
  one thread), to show the loader is not the bottleneck;
- ``--image-size 224``: real images at web size (clipart, emoji and Fashion-MNIST from the
  offline packages, upscaled to the 256 px squares the download stage stores and re-encoded
  at JPEG quality 75-90: ``demo.train_shards.write_web_shards``), random-resized crops to
  224 px, context 77 (ViT-B/32's).

Besides samples/s (wall clock, which a shared machine distorts), each side's CPU time is
summed over the process and its loader workers: samples per CPU-second is samples/s per
core, and 1,000 / that is the cores needed per 1,000 samples/s. ``--decode-device cuda`` adds
our loader with ``train.decode_device: cuda`` (nvJPEG on the GPU); it needs a CUDA GPU.
``--decoded-cache-mb N`` adds our loader with ``train.decoded_cache_mb: N``, measured after
one epoch has filled the cache (the steady state of a dataset that fits).

    .venv/bin/python bench/bench_loader.py [--quick] [--image-size 224] [--decode-device cuda]
        [--decoded-cache-mb 64]

Writes bench/results/loader.json (loader_224.json at 224 px).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.train_shards import write_fashion_shards, write_web_shards  # noqa: E402
from model import ClipLoss, create_model  # noqa: E402
from model.data import LoaderConfig, TrainLoader, read_shard_list  # noqa: E402
from model.device_decode import require_device  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_seconds() -> float:
    """User + system CPU time of this process and its live children (loader workers)."""
    me = psutil.Process()
    return sum(sum(p.cpu_times()[:2]) for p in (me, *me.children(recursive=True)))


def rate(next_batch: Callable[[], Any], batches: int, batch_size: int) -> tuple[float, float]:
    """(samples/s, samples per CPU-second) over ``batches`` batches after one warm-up batch
    (worker start-up)."""
    next_batch()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    sync()
    cpu, started = cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        next_batch()
    sync()
    samples = batches * batch_size
    return samples / (time.perf_counter() - started), samples / (cpu_seconds() - cpu)


def ours(
    folder: Path, batch: int, workers: int, batches: int, size: int, context: int,
    decode_device: str | None = None, decoded_cache_mb: int = 0,
) -> tuple[float, float]:  # fmt: skip
    shards, sizes = read_shard_list(str(folder), {})
    cfg = LoaderConfig(shards, sizes, batch, size, context, workers=workers,
                       sampling="resampled", decode_device=decode_device,
                       decoded_cache_mb=decoded_cache_mb)  # fmt: skip
    loader = TrainLoader(cfg, rank=0, world=1)
    if decoded_cache_mb:  # one epoch first, so that the cache holds what fits
        for _ in range(sum(sizes) // batch + 1):
            loader.next_batch()
    return rate(loader.next_batch, batches, batch)


def open_clip_loader(
    folder: Path, batch: int, workers: int, batches: int, size: int, context: int
) -> tuple[float, float]:
    import open_clip
    from open_clip_train.data import get_wds_dataset

    names = sorted(p.name for p in folder.glob("*.tar"))
    args = SimpleNamespace(
        train_data="::".join(str(folder / n) for n in names),
        dataset_resampled=True,
        train_num_samples=batch * (batches + 1) * max(workers, 1) * 4,
        train_data_upsampling_factors=None,
        seed=0,
        batch_size=batch,
        workers=workers,
        world_size=1,
    )
    preprocess = open_clip.image_transform(size, is_train=True)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=context)
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

    return rate(step, steps, batch)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--image-size", type=int, choices=(28, 224), default=28)
    parser.add_argument("--decode-device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: also our loader with nvJPEG decode (needs a CUDA GPU)")  # fmt: skip
    parser.add_argument("--decoded-cache-mb", type=int, default=0,
                        help="also our loader with this decoded-image cache, after an epoch")  # fmt: skip
    args = parser.parse_args()
    if args.decode_device == "cuda":
        try:
            require_device("cuda")
        except ValueError as e:
            raise SystemExit(f"--decode-device cuda: {e}") from None
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    size = args.image_size
    context = 32 if size == 28 else 77
    if size == 28:
        samples, batches, batch = (2000, 15, 128) if args.quick else (8000, 40, 256)
    else:
        samples, batches, batch = (600, 4, 32) if args.quick else (3000, 16, 64)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "shards"
        if size == 28:
            write_fashion_shards(folder, samples, samples // 8)
        else:
            write_web_shards(folder, samples, samples // 8)
        for workers in (0, 1, 2):
            theirs = open_clip_loader(folder, batch, workers, batches, size, context)
            mine = ours(folder, batch, workers, batches, size, context)
            row = {"workers": workers, "ours": mine[0], "open_clip": theirs[0],
                   "ratio": mine[0] / theirs[0], "ours_per_core": mine[1],
                   "open_clip_per_core": theirs[1], "ratio_per_core": mine[1] / theirs[1]}  # fmt: skip
            if args.decode_device == "cuda":
                device = ours(folder, batch, workers, batches, size, context, "cuda")
                row |= {"ours_cuda": device[0], "ours_cuda_per_core": device[1]}
            if args.decoded_cache_mb:
                cached = ours(folder, batch, workers, batches, size, context,
                              decoded_cache_mb=args.decoded_cache_mb)  # fmt: skip
                row |= {"ours_cached": cached[0], "ours_cached_per_core": cached[1]}
            rows.append(row)
    what = "28 px Fashion-MNIST" if size == 28 else "224 px crops of 256 px web-style"
    print(f"loader, batch {batch}, {what} JPEG shards (shared 2-core machine)")
    print(f"{'workers':>8} {'ours/s':>8} {'oclip/s':>8} {'ratio':>6} | {'ours/core':>10} "
          f"{'oclip/core':>10} {'ratio':>6}" + (f" | {'cuda/s':>8} {'cuda/core':>10}"
          if args.decode_device == "cuda" else "")
          + (f" | {'cached/s':>8} {'cached/core':>11}" if args.decoded_cache_mb else ""))  # fmt: skip
    for r in rows:
        line = (f"{r['workers']:>8} {r['ours']:>8.0f} {r['open_clip']:>8.0f} {r['ratio']:>5.2f}x"
                f" | {r['ours_per_core']:>10.0f} {r['open_clip_per_core']:>10.0f}"
                f" {r['ratio_per_core']:>5.2f}x")  # fmt: skip
        if "ours_cuda" in r:
            line += f" | {r['ours_cuda']:>8.0f} {r['ours_cuda_per_core']:>10.0f}"
        if "ours_cached" in r:
            line += f" | {r['ours_cached']:>8.0f} {r['ours_cached_per_core']:>11.0f}"
        print(line)
    per_core = {"ours": sum(r["ours_per_core"] for r in rows) / len(rows),
                "open_clip": sum(r["open_clip_per_core"] for r in rows) / len(rows)}  # fmt: skip
    if args.decode_device == "cuda":
        per_core["ours_cuda"] = sum(r["ours_cuda_per_core"] for r in rows) / len(rows)
    if args.decoded_cache_mb:
        per_core["ours_cached"] = sum(r["ours_cached_per_core"] for r in rows) / len(rows)
    cores = {name: 1000 / value for name, value in per_core.items()}
    print("CPU cores per 1,000 samples/s (mean over the rows): "
          + ", ".join(f"{name} {value:.2f}" for name, value in cores.items()))  # fmt: skip
    if args.decode_device == "cpu":
        print("(--decode-device cuda adds our loader with nvJPEG decode; it needs a CUDA GPU)")
    result: dict[str, Any] = {"image_size": size, "batch": batch, "rows": rows,
                              "cores_per_1000_samples_per_s": cores, "quick": args.quick}  # fmt: skip
    if size == 28:
        consumed = train_consumption(batch, 5 if args.quick else 10)
        one_worker = rows[1]["ours"]
        print(f"training step consumes {consumed:.0f} samples/s per process; one loader worker "
              f"supplies {one_worker / consumed:.1f}x that")  # fmt: skip
        result |= {"train_consumes_samples_per_s": consumed,
                   "loader_over_consumption_1_worker": one_worker / consumed}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "loader.json" if size == 28 else f"loader_{size}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
