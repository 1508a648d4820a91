"""Training throughput: our ``model.train`` vs OpenCLIP's ``open_clip_train.main``, side by side.

Same Fashion-MNIST JPEG shards, same architecture (clipflow-tiny, registered in OpenCLIP
with ``add_model_config``), same batch per rank, ranks, loader workers, threads and
precision; both launched by ``torchrun --standalone`` (gloo on CPU, NCCL on a GPU). Rates
are the mean over logging windows after the first (start-up excluded): ours from
``metrics.jsonl``, OpenCLIP's from its ``Batch (t)`` window averages.

    .venv/bin/python bench/bench_train.py [--quick] [--accum 4]
    .venv/bin/python bench/bench_train.py --gpu --batch 512   # ViT-B-32, bf16, one GPU: + MFU

``--accum K`` accumulates K micro-batches per optimizer step on both sides (our
``accum_steps``, OpenCLIP's ``--accum-freq``: both cache features and recompute each
micro-batch against the whole batch). Writes bench/results/train.json (train_accum4.json
with ``--accum 4``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from demo.train_shards import write_fashion_shards  # noqa: E402
from model.config import CONFIG_DIR, get_model_config  # noqa: E402

RESULTS = REPO / "bench" / "results" / "train.json"
# OpenCLIP's arguments travel in a JSON file: torchrun's own parser would claim some
# (``--logs`` is an ambiguous prefix of its ``--logs-specs``). OpenCLIP's trainer passes
# device_ids=[cpu] to DDP, which DDP refuses; the shim drops them on CPU, nothing else.
OPEN_CLIP_LAUNCHER = """
import json
import sys
import torch
import open_clip

class CpuDDP(torch.nn.parallel.DistributedDataParallel):
    def __init__(self, module, device_ids=None, **kwargs):
        if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
            device_ids = None
        super().__init__(module, device_ids=device_ids, **kwargs)

torch.nn.parallel.DistributedDataParallel = CpuDDP
model_json, argv = json.load(open(sys.argv[1]))
open_clip.add_model_config(model_json)
from open_clip_train.main import main
main(argv)
"""
_BATCH_TIME = re.compile(r"Batch \(t\): ([0-9.]+)")
H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM


def torchrun(nproc: int, *command: str, threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    out = subprocess.run(
        [*launch, "--nproc-per-node", str(nproc), *command],
        cwd=REPO, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed:\n{(out.stdout + out.stderr)[-4000:]}")
    return out.stdout + out.stderr


def ours(run: dict[str, Any], tmp: Path) -> float:
    config = {
        "model": run["model"], "batch_size": run["batch"], "samples": run["samples"],
        "lr": 1e-3, "warmup": 4, "precision": run["precision"], "workers": run["workers"],
        "accum_steps": run["accum"],
        "log_every_steps": run["log_every"], "checkpoint_every_steps": 10**9,
        "shards": str(tmp / "shards"), "output": str(tmp / "ours"), "resume": None,
    }  # fmt: skip
    (tmp / "ours.yaml").write_text(yaml.safe_dump(config))
    torchrun(run["nproc"], "-m", "model.train", "--config", str(tmp / "ours.yaml"),
             threads=run["threads"])  # fmt: skip
    lines = (tmp / "ours" / "metrics.jsonl").read_text().splitlines()
    rates = [json.loads(line)["samples_per_s"] for line in lines][1:]
    waits = [json.loads(line)["data_wait"] for line in lines][1:]
    run["ours_data_wait"] = sum(waits) / len(waits)
    return sum(rates) / len(rates)


def open_clip(run: dict[str, Any], tmp: Path) -> float:
    launcher = tmp / "open_clip_launcher.py"
    launcher.write_text(OPEN_CLIP_LAUNCHER)
    model_json = Path(run["model"]) if run["model"].endswith(".json") else (
        CONFIG_DIR / f"{run['model']}.json"
    )  # fmt: skip
    shards = sorted((tmp / "shards").glob("*.tar"))
    precision = {"amp_bf16": "amp_bf16", "fp32": "fp32", "amp_fp16": "amp"}[run["precision"]]
    argv = [
        "--train-data", "::".join(str(s) for s in shards), "--dataset-type", "webdataset",
        "--train-num-samples", str(run["samples"]), "--epochs", "1",
        "--batch-size", str(run["batch"]), "--workers", str(run["workers"]),
        "--lr", "1e-3", "--warmup", "4", "--precision", precision, "--model", model_json.stem,
        "--accum-freq", str(run["accum"]),
        "--local-loss", "--gather-with-grad", "--log-every-n-steps", str(run["log_every"]),
        "--logs", str(tmp / "open_clip_logs"), "--name", "bench", "--save-frequency", "0",
        "--report-to", "", "--zeroshot-frequency", "0", "--val-frequency", "0",
        "--device", run["device"],
    ]  # fmt: skip
    (tmp / "open_clip_args.json").write_text(json.dumps([str(model_json), argv]))
    out = torchrun(
        run["nproc"], str(launcher), str(tmp / "open_clip_args.json"), threads=run["threads"]
    )
    windows = [float(t) for t in _BATCH_TIME.findall(out)][1:]
    if not windows:
        raise RuntimeError(f"no throughput in OpenCLIP's log:\n{out[-3000:]}")
    # OpenCLIP's batch time is per optimizer step, which takes accum_freq micro-batches.
    return sum(run["batch"] * run["nproc"] * run["accum"] / t for t in windows) / len(windows)


def flops_per_sample(model: str) -> float:
    """Training FLOPs per image-text pair: 6 x (block weights x tokens) for both towers
    (matmuls dominate; attention scores and the tiny heads are left out)."""
    cfg = get_model_config(model)
    vision_tokens = (cfg.vision.image_size // cfg.vision.patch_size) ** 2 + 1
    vision = 12 * cfg.vision.width**2 * cfg.vision.layers * vision_tokens
    text = 12 * cfg.text.width**2 * cfg.text.layers * cfg.text.context_length
    return 6.0 * (vision + text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--gpu", action="store_true", help="ViT-B-32, amp_bf16, one GPU")
    parser.add_argument("--batch", type=int, help="batch per rank (GPU: the largest that fits)")
    parser.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    args = parser.parse_args()
    if args.gpu:
        run = {"model": "ViT-B-32", "precision": "amp_bf16", "nproc": 1, "workers": 8,
               "threads": 4, "batch": args.batch or 512, "device": "cuda", "image": 224}  # fmt: skip
    else:
        run = {"model": "clipflow-tiny", "precision": "fp32", "nproc": 2, "workers": 1,
               "threads": 1, "batch": args.batch or 64, "device": "cpu", "image": 28}  # fmt: skip
    steps = 12 if args.quick else 40
    run["accum"] = args.accum
    run["log_every"] = 4 if args.quick else 10
    run["samples"] = steps * run["batch"] * run["nproc"] * args.accum
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_fashion_shards(tmp / "shards", min(run["samples"], 20_000), 1000, size=run["image"])
        theirs = open_clip(run, tmp)
        mine = ours(run, tmp)
    result = {**run, "steps": steps, "ours": mine, "open_clip": theirs, "ratio": mine / theirs}
    if args.gpu:
        flops = flops_per_sample(run["model"])
        result["mfu_ours"] = mine * flops / H100_BF16_PEAK
        result["mfu_open_clip"] = theirs * flops / H100_BF16_PEAK
    print(f"training samples/s: {run['model']}, {run['precision']}, {run['nproc']} rank(s) x "
          f"batch {run['batch']} x {run['accum']} micro-batch(es), {run['workers']} loader "
          f"worker(s), {run['threads']} thread(s) "
          f"per rank, {run['device']} (shared machine)")  # fmt: skip
    print(f"{'ours':>10} {'open_clip':>10} {'ratio':>7} {'data_wait':>10}")
    print(f"{mine:>10.1f} {theirs:>10.1f} {mine / theirs:>6.2f}x {run['ours_data_wait']:>10.3f}")
    results = RESULTS if args.accum == 1 else RESULTS.with_name(f"train_accum{args.accum}.json")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({**result, "quick": args.quick}, indent=2))


if __name__ == "__main__":
    main()
