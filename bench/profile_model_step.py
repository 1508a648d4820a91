"""Profile one bf16 training step of ours vs OpenCLIP on CUDA: top kernels by GPU time.

python bench/profile_model_step.py [--config ViT-B-32] [--batch 256]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from open_clip.loss import ClipLoss as RefClipLoss
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_model_step import make_batch, make_pair, step_fn  # noqa: E402
from model import ClipLoss  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rows", type=int, default=18)
    parser.add_argument("--sort", default="cuda_time_total", help="e.g. self_cpu_time_total")
    args = parser.parse_args()
    ours, ref = make_pair(args.config, "cuda")
    images, text = make_batch(args.config, args.batch, "cuda")
    runs = {
        "clipflow": step_fn(ours, ClipLoss(), images, text, torch.bfloat16),
        "open_clip": step_fn(ref, RefClipLoss(), images, text, torch.bfloat16),
    }
    for name, run in runs.items():
        for _ in range(5):
            run()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                run()
            torch.cuda.synchronize()
        print(f"=== {name}: 3 steps")
        print(prof.key_averages().table(sort_by=args.sort, row_limit=args.rows,
                                        max_name_column_width=60))  # fmt: skip


if __name__ == "__main__":
    main()
