"""A training recipe for the demo, judged on the validation set over several data orders.

Retrains the demo's curated rows (run ``make demo`` first) with train-section overrides, once
per shard seed (each seed is another order of the same samples), and prints each run's
Fashion-MNIST zero-shot acc1 on the validation set (10,000 Fashion-MNIST *train* images the
demo web never shows) and on the test set, then the means. Choose recipes on the validation
column; docs/DEMO.md's table of the levers measured on 2026-12-03 (issue 18) came from it.

    .venv/bin/python bench/demo_recipe.py --seeds 0,1,2                        # the default
    .venv/bin/python bench/demo_recipe.py --seeds 0,1,2 --set train.batch_size=128
    .venv/bin/python bench/demo_recipe.py --seeds 0 --set train.lr=1e-3 --set train.hflip=true

Each run is ``clipflow run CONFIG --stages shard,train,evaluate --force shard`` with a copy
of the config in a temporary folder (~90-100 s on the 2-core machine). It writes into the
demo's storage root: shards, train and eval then hold the last run's outputs. Appends one
JSON line per run to bench/results/recipe.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_demo import build_validation, clipflow, validation_acc1  # noqa: E402
from tasks.core.config import ALLOW_PRIVATE_ENV, load_config  # noqa: E402

RESULTS = REPO / "bench" / "results" / "recipe.jsonl"


def override(cfg: dict[str, Any], assignment: str) -> None:
    """Apply ``section.key=value`` (the value read as YAML) to the config dict."""
    target, _, text = assignment.partition("=")
    section, _, key = target.partition(".")
    if not text or not key or section not in cfg:
        raise SystemExit(f"--set {assignment!r}: expected section.key=value")
    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    cfg[section][key] = value


def run_config(config: Path, seed: int, assignments: list[str]) -> dict[str, Any]:
    """``config`` as a dict with its paths made absolute (the copy lives elsewhere), the
    shard seed and the overrides applied."""
    cfg = load_config(config).model_dump(mode="json")
    cfg["shard"]["seed"] = seed
    for assignment in assignments:
        override(cfg, assignment)
    return cfg


def retrain(config: Path, seed: int, assignments: list[str], folder: Path) -> dict[str, Any]:
    """One retrain on shard seed ``seed``: its accuracies, wall time and final loss."""
    path = folder / f"seed{seed}.yaml"
    path.write_text(yaml.safe_dump(run_config(config, seed, assignments)))
    started = time.monotonic()
    code, output = clipflow(
        "run", str(path), "--stages", "shard,train,evaluate", "--force", "shard"
    )
    if code:
        raise SystemExit(f"seed {seed}: clipflow run failed:\n{output[-3000:]}")
    wall = time.monotonic() - started
    root = Path(load_config(path).storage.root)
    results = json.loads((root / "eval" / "results.json").read_text())["results"]
    test = next(r for r in results if r["dataset"] == "fashion_mnist")["metrics"]["acc1"]
    final = json.loads((root / "train" / "summary.json").read_text())["final"]
    return {
        "seed": seed,
        "set": assignments,
        "val_acc1": round(100 * validation_acc1(path), 2),
        "test_acc1": round(100 * test, 2),
        "wall_s": round(wall, 1),
        "final_loss": round(final["loss"], 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    parser.add_argument("--seeds", default="0,1,2", help="shard seeds, comma-separated")
    parser.add_argument("--set", dest="assignments", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="a config override (repeatable)")  # fmt: skip
    args = parser.parse_args()
    os.environ[ALLOW_PRIVATE_ENV] = "1"  # the demo config reaches the demo web on loopback
    build_validation("demo")  # ~3 s; a set built for another build of the web would be wrong
    runs = []
    with tempfile.TemporaryDirectory(prefix="clipflow-recipe-") as folder:
        for seed in map(int, args.seeds.split(",")):
            run = retrain(args.config, seed, args.assignments, Path(folder))
            print(json.dumps(run), flush=True)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            with RESULTS.open("a") as out:
                out.write(json.dumps({"config": str(args.config), **run}) + "\n")
            runs.append(run)
    print(f"{'seed':>4}  {'validation acc1 %':>17}  {'test acc1 %':>11}  {'wall s':>6}")
    for run in runs:
        print(
            f"{run['seed']:>4}  {run['val_acc1']:>17.2f}  {run['test_acc1']:>11.2f}  {run['wall_s']:>6.1f}"
        )
    print(f"mean  {statistics.mean(r['val_acc1'] for r in runs):>17.2f}  "
          f"{statistics.mean(r['test_acc1'] for r in runs):>11.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
