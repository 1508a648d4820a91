"""Few-shot adaptation on Fashion-MNIST with the demo's model: zero-shot vs linear probe vs
prompt tuning (CoOp) vs adapter (Tip-Adapter) at K = 1, 4, 16, each with its time.

    CLIPFLOW_ALLOW_PRIVATE_NETWORKS=1 .venv/bin/python bench/bench_adapt.py \
        [--checkpoint data/demo/train/checkpoints/latest.pt]

Needs a finished `make demo` (its checkpoint and the built-in Fashion-MNIST set); the
environment variable is the one demo.yaml needs (README, "Quick start"). Prompt tuning and
the adapter run with the evaluate stage's settings (``evaluate.prompt_tuning_*``,
``evaluate.adapter_*``). Image
features of both splits are computed once and shared by every method; times are the
method's own (feature extraction is reported on its own line). Writes
bench/results/adapt.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from model.adapt import AdapterSearch, PromptTuning, few_shot
from model.eval_data import WdsEvalDataset, read_dataset_info
from model.linear_probe import image_features, linear_probe
from model.zeroshot import zeroshot_classifier
from tasks.core.config import load_config
from tasks.core.storage import Storage
from tasks.evaluate.stage import _loader, load_model

REPO = Path(__file__).resolve().parent.parent
SHOTS = (1, 4, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--train-samples", type=int, default=2000,
                        help="train-split images whose features are extracted")  # fmt: skip
    parser.add_argument("--test-samples", type=int, default=10_000)
    args = parser.parse_args()
    cfg = load_config(args.config)
    evaluate = {"device": "cpu", "checkpoint": args.checkpoint or cfg.evaluate.checkpoint}
    cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update=evaluate)})
    spec = next(d for d in cfg.evaluate.datasets if d.name == "fashion_mnist")
    lm = load_model(cfg, Storage(cfg.storage))
    info = read_dataset_info(spec.path, True, {})
    classnames, templates = list(info.classnames or []), list(info.templates or [])

    started = time.perf_counter()
    xy = {}
    for split, n in (("train", args.train_samples), ("test", args.test_samples)):
        dataset = WdsEvalDataset(info, split, lm.transform, {})
        x, y = image_features(lm.model, _loader(dataset, cfg), lm.device)
        xy[split] = (x[:n], y[:n])
    features_s = time.perf_counter() - started
    zeroshot = zeroshot_classifier(lm.model, lm.tokenizer, classnames, templates)

    rows: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    e = cfg.evaluate
    tuning = PromptTuning(e.prompt_tuning_epochs, e.prompt_tuning_lr, e.prompt_tuning_batch_size,
                          e.prompt_tuning_kg_weight, e.prompt_tuning_class_specific, e.seed)  # fmt: skip
    search = AdapterSearch(tuple(e.adapter_alphas), tuple(e.adapter_betas))
    for method in ("prompt_tuning", "adapter"):
        t = time.perf_counter()
        result = few_shot(method, lm.model, lm.tokenizer, classnames, zeroshot, xy["train"],
                          xy["test"], SHOTS, templates, tuning, search)  # fmt: skip
        seconds[method] = time.perf_counter() - t
        rows[method] = {f"{k}": result.metrics[f"acc1_{k}shot"] for k in SHOTS}
        rows["zero-shot"] = {f"{k}": result.metrics["zeroshot_acc1"] for k in SHOTS}
    t = time.perf_counter()
    rows["linear probe"] = {}
    for k in SHOTS:
        probe = linear_probe(xy["train"], xy["test"], classnames, None, k, 1000, 0, 0.2)
        rows["linear probe"][f"{k}"] = probe.metrics["acc1"]
    seconds["linear probe"] = time.perf_counter() - t
    seconds["zero-shot"] = 0.0

    print(f"Fashion-MNIST, {len(xy['test'][1])} test images; features of both splits "
          f"{features_s:.1f}s (shared)")  # fmt: skip
    print(f"{'method':<14}" + "".join(f"{f'K={k}':>9}" for k in SHOTS) + f"{'time':>9}")
    for name in ("zero-shot", "linear probe", "prompt_tuning", "adapter"):
        cells = "".join(f"{100 * rows[name][f'{k}']:8.1f}%" for k in SHOTS)
        print(f"{name:<14}{cells}{seconds[name]:8.1f}s")
    out = REPO / "bench" / "results" / "adapt.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"acc1": rows, "seconds": seconds, "torch": torch.__version__},
                              indent=2))  # fmt: skip
    print(f"written {out}")


if __name__ == "__main__":
    main()
