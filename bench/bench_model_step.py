"""Training-step throughput: our CLIP vs OpenCLIP on the same config, batch, data and threads.

One step = forward + contrastive loss + backward + AdamW step. Both models start from the same
weights and see the same images and tokens (realistic captions, so the padded tail is real).
Steps are interleaved (ours, theirs, ours, ...) so a noisy shared machine penalises both
alike; the median step time is reported. On CUDA it also runs ViT-B-32 in bf16 (at batch 256,
or each of --cuda-batches) and reports MFU against the GPU's dense bf16 peak. ``--model`` runs
the named configs instead (repeatable: ``--model RN50 --model clipflow-tiny-rn``), on CPU at a
small batch (``--cpu-batch``) and on CUDA at --cuda-batches.

    .venv/bin/python bench/bench_model_step.py [--quick] [--threads N] [--model RN50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import open_clip
import torch
from open_clip.loss import ClipLoss as RefClipLoss
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.text_corpus import web_captions  # noqa: E402
from model import ClipLoss, create_model, get_tokenizer, load_checkpoint  # noqa: E402
from model.config import CONFIG_DIR  # noqa: E402

# Dense bf16 peaks (TFLOP/s) for the MFU column; unknown GPUs report none.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def train_flops_per_sample(name: str) -> float:
    """Model FLOPs of one sample's forward + backward (3x forward), full 77-token text."""
    cfg = open_clip.get_model_config(name)
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    if isinstance(v["layers"], list):
        return 3.0 * counted_forward_flops(name)
    tokens = (v["image_size"] // v["patch_size"]) ** 2 + 1
    width, head_width = v["width"], v.get("head_width", 64)
    del head_width
    vision = v["layers"] * tokens * (24 * width**2 + 4 * tokens * width)
    vision += 2 * (tokens - 1) * 3 * v["patch_size"] ** 2 * width
    ctx, tw = t["context_length"], t["width"]
    text = t["layers"] * ctx * (24 * tw**2 + 4 * ctx * tw)
    return 3.0 * (vision + text)


def counted_forward_flops(name: str) -> float:
    """FLOPs of OpenCLIP's forward on one image and one full-length text, as counted by
    torch's FlopCounterMode (convolutions are no sum of a few matrix products to write out)."""
    cfg = open_clip.get_model_config(name)
    size, context = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    model = open_clip.create_model(name).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 3, size, size), torch.ones(1, context, dtype=torch.long))
    return float(counter.get_total_flops())


def make_pair(name: str, device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    open_clip.add_model_config(CONFIG_DIR / f"{name}.json")
    torch.manual_seed(0)
    ref = open_clip.create_model(name).to(device)
    ours = create_model(name)
    load_checkpoint(ours, ref.state_dict())
    return ours.to(device), ref


def make_batch(name: str, batch: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = open_clip.get_model_config(name)
    size = cfg["vision_cfg"]["image_size"]
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    tok = get_tokenizer(context_length=cfg["text_cfg"]["context_length"])
    return images.to(device), tok(web_captions(batch, seed=2)).to(device)


def step_fn(model, loss_fn, images, text, dtype):
    """A closure running one optimiser step; returns the loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1)
    autocast = torch.autocast(images.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step() -> float:
        with autocast:
            img, txt, scale = model(images, text)[:3]
            loss = loss_fn(img, txt, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def bench(name: str, batch: int, steps: int, device: str, dtype: torch.dtype) -> dict:
    ours, ref = make_pair(name, device)
    images, text = make_batch(name, batch, device)
    runs = {
        "clipflow": step_fn(ours, ClipLoss(), images, text, dtype),
        "open_clip": step_fn(ref, RefClipLoss(), images, text, dtype),
    }
    first = {k: run() for k, run in runs.items()}  # warm-up; same weights, same first loss
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(steps):
        for k, run in runs.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            run()
            if device == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    result = {
        "config": name,
        "batch": batch,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "first_loss": first,
    }
    peak = next(
        (
            p
            for g, p in PEAK_BF16_TFLOPS.items()
            if device == "cuda" and g in torch.cuda.get_device_name()
        ),
        None,
    )
    flops = train_flops_per_sample(name) if peak else 0.0
    for k, ts in times.items():
        sps = batch / statistics.median(ts)
        result[k] = {"samples_per_s": sps, "step_s_median": statistics.median(ts)}
        if peak:
            result[k]["mfu"] = sps * flops / (peak * 1e12)
    result["speedup"] = result["clipflow"]["samples_per_s"] / result["open_clip"]["samples_per_s"]
    return result


def cases(args: argparse.Namespace) -> list[tuple[str, int, str, torch.dtype]]:
    """(config, batch, device, dtype) of each run: tiny configs at a larger CPU batch."""
    names = args.model or ["clipflow-tiny", "ViT-B-32"]
    out = []
    for name in names:
        tiny = name.startswith("clipflow-tiny")
        default = (64 if args.quick else 256) if tiny else (4 if args.quick else 8)
        out.append((name, args.cpu_batch or default, "cpu", torch.float32))
    if torch.cuda.is_available():
        for name in args.model or ["ViT-B-32"]:
            for batch in map(int, args.cuda_batches.split(",")):
                out.append((name, batch, "cuda", torch.bfloat16))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, smaller batches")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default="bench/results/model_step.json")
    parser.add_argument(
        "--cuda-batches", default="256", help="comma-separated ViT-B-32 batches on CUDA"
    )
    parser.add_argument(
        "--model", action="append", help="a config to run instead of the defaults; repeatable"
    )
    parser.add_argument("--cpu-batch", type=int, help="CPU batch for every --model")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = 3 if args.quick else 10
    results = [bench(*case[:2], steps, case[2], case[3]) for case in cases(args)]
    header = f"{'config':<18}{'device':<7}{'dtype':<10}{'batch':>6}{'clipflow/s':>12}"
    header += f"{'open_clip/s':>13}{'ratio':>7}{'MFU ours':>10}{'MFU ref':>9}"
    print(header)
    for r in results:
        mfu = [r[k].get("mfu") for k in ("clipflow", "open_clip")]
        print(
            f"{r['config']:<18}{r['device']:<7}{r['dtype']:<10}{r['batch']:>6}"
            f"{r['clipflow']['samples_per_s']:>12.1f}{r['open_clip']['samples_per_s']:>13.1f}"
            f"{r['speedup']:>6.2f}x" + "".join(f"{m:>10.1%}" if m else f"{'-':>10}" for m in mfu)
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"cuda_available": torch.cuda.is_available(), "results": results}, indent=2)
    )


if __name__ == "__main__":
    main()
