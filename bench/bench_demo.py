"""The embedded demo end to end: per-stage wall times and zero-shot accuracy over fresh runs.

Each run is ``clipflow demo`` in its own process (what ``make demo`` runs) on an empty
storage root, with the demo web and the benchmark sets already built (the set-up, timed
once before the first run and not counted in the pipeline's time). The pipeline wall time is
the one ``clipflow demo`` prints (serving the web, the Prefect flow, the summary); the stage
times come from the stage manifests. The spread (max - min over runs) tells how far two
fresh runs differ: wall times on a shared machine, and accuracy. Fresh runs over one web keep
the same samples in the same order, so their accuracies agree; ``--shard-seeds 0,1,2`` gives
run i the shard stage's seed i (another order of the same samples), which shows how much the
result owes to the order the model sees the data in (docs/DEMO.md: 65.7% and 83.9% on seeds
0 and 1 before the demo clipped its gradients).

    .venv/bin/python bench/bench_demo.py [--runs 2] [--config configs/demo.yaml] [--port 8765]
    .venv/bin/python bench/bench_demo.py --runs 2 --shard-seeds 0,1
    .venv/bin/python bench/bench_demo.py --runs 1 --web-size test   # a quick try, ~300 images

``--validation`` also scores each run's model on 10,000 Fashion-MNIST *train* images the demo
web never shows (``demo.benchmark_sets.fashion_mnist_validation_set``, built at set-up), so a
recipe can be chosen without looking at the test set the README reports.

Writes bench/results/demo.json and demo.md. The machine's load average is recorded around
each run: the 2-core build machine is often shared, and the times move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tasks.core.config import ALLOW_PRIVATE_ENV, load_config  # noqa: E402

RESULTS = REPO / "bench" / "results"
STAGES = ("crawl", "download", "curate", "shard", "train", "evaluate")
HEADLINE = "fashion_mnist"
RESULTS_LOG = "bench-demo-last.log"  # the last run's clipflow output, under data/
_WALL = re.compile(r"wall time ([0-9.]+)s")


def run_config(
    config: Path, root: Path, port: int, shard_seed: int | None = None
) -> dict[str, Any]:
    """The pipeline config of one run: ``config`` with its paths made absolute, storage under
    ``root``, the demo web served on ``port`` of the seed's host, and ``shard.seed`` set
    when ``shard_seed`` is given."""
    cfg = load_config(config).model_dump(mode="json")
    cfg["storage"]["root"] = str(root)
    if shard_seed is not None:
        cfg["shard"]["seed"] = shard_seed
    cfg["crawl"]["seeds"] = [
        re.sub(r":\d+/", f":{port}/", seed, count=1) for seed in cfg["crawl"]["seeds"]
    ]
    return cfg


def load_average() -> float:
    """The 1-minute load average (2.0 keeps both cores of the build machine busy)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def clipflow(*args: str) -> tuple[int, str]:
    """Run the ``clipflow`` CLI in a process group of its own (exit code, output); the group
    (Prefect's server, torchrun's ranks) dies with the bench if the bench is stopped.

    The CLI runs this checkout's code: the venv's ``clipflow`` script would otherwise import
    the checkout the venv was installed from (its editable finder), so a copy of the bench in
    a git worktree of a lever under test would time the main checkout. ``PYTHONPATH`` is
    searched first, and torchrun's ranks inherit it."""
    exe = Path(sys.executable).with_name("clipflow")
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [str(exe), *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, ALLOW_PRIVATE_ENV: "1", "PYTHONPATH": path}, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = proc.communicate()
        return proc.returncode, output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def web_dir(size: str) -> Path:
    """Where the demo web of preset ``size`` is built: ``make demo``'s own for the demo size."""
    from flows.demo import DEMO_WEB_DIR

    return DEMO_WEB_DIR if size == "demo" else DEMO_WEB_DIR.with_name(f"demo-web-{size}")


def set_up(config: Path, size: str) -> float:
    """Build the demo web and the benchmark sets (what a first ``make demo`` adds to the
    pipeline); seconds taken, near 0 when they are already built."""
    from flows.demo import ensure_benchmark_sets, ensure_demo_web

    started = time.monotonic()
    os.environ[ALLOW_PRIVATE_ENV] = "1"
    ensure_benchmark_sets(load_config(config))
    ensure_demo_web(web_dir(size), size)
    return time.monotonic() - started


VALIDATION = REPO / ".cache" / "benchmarks" / "fashion_mnist_val"


def build_validation(size: str) -> None:
    """The validation set of the demo web of preset ``size``, rebuilt (~3 s) into VALIDATION."""
    from demo.benchmark_sets import fashion_mnist_validation_set, write_set

    write_set(VALIDATION, fashion_mnist_validation_set(web_dir(size)))


def validation_acc1(run_yaml: Path) -> float:
    """Zero-shot acc1 of the run's trained model on the validation set (12 templates)."""
    from tasks.core.config import EvalDataset
    from tasks.core.storage import Storage
    from tasks.evaluate.stage import evaluate_dataset, load_model

    cfg = load_config(run_yaml)
    storage = Storage(cfg.storage)
    spec = EvalDataset(name="fashion_mnist_val", path=str(VALIDATION),
                       task="zeroshot_classification")  # fmt: skip
    return float(evaluate_dataset(spec, cfg, load_model(cfg, storage), storage).metrics["acc1"])


def one_run(
    config: Path,
    port: int,
    size: str,
    keep: Path | None,
    shard_seed: int | None = None,
    validation: bool = False,
) -> dict[str, Any]:
    """One fresh ``clipflow demo``: stage seconds, pipeline wall time, zero-shot acc1 per
    classification set, load average before and after."""
    with tempfile.TemporaryDirectory(prefix="bench-demo-", dir=REPO / "data") as tmp:
        root = Path(tmp) / "demo"
        run_yaml = Path(tmp) / "demo.yaml"
        cfg = run_config(config, root, port, shard_seed)
        run_yaml.write_text(yaml.safe_dump(cfg, sort_keys=False))
        load_before = load_average()
        started = time.monotonic()
        code, output = clipflow(
            "demo", str(run_yaml), "--web-size", size, "--web-dir", str(web_dir(size))
        )
        elapsed = time.monotonic() - started
        (REPO / "data" / RESULTS_LOG).write_text(output)
        if code != 0:
            raise RuntimeError(f"clipflow demo failed:\n{output[-3000:]}")
        wall = _WALL.search(output)
        if wall is None:
            raise RuntimeError(f"clipflow demo printed no wall time:\n{output[-3000:]}")
        manifests = {s: json.loads((root / "_manifests" / f"{s}.json").read_text()) for s in STAGES}
        results = json.loads((root / "eval" / "results.json").read_text())["results"]
        final_train_rate = manifests["train"]["extra"]["final"]["samples_per_s"]
        run = {
            "shard_seed": cfg["shard"]["seed"],
            "stages_s": {s: round(m["timings"]["seconds"], 1) for s, m in manifests.items()},
            "pipeline_s": float(wall.group(1)),
            "process_s": round(elapsed, 1),
            "acc1": {r["dataset"]: r["metrics"]["acc1"] for r in results if "acc1" in r["metrics"]},
            "train_samples_per_s": final_train_rate,
            "kept": manifests["curate"]["counts"]["kept"],
            "load_before": load_before,
            "load_after": load_average(),
        }
        if validation:
            run["val_acc1"] = validation_acc1(run_yaml)
        if keep is not None:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(root, keep)
    return run


def spread(values: list[float]) -> float:
    return max(values) - min(values) if values else 0.0


def table(runs: list[dict[str, Any]]) -> str:
    """Markdown: one row per run, then the spread (max - min) of every column."""
    val = all("val_acc1" in run for run in runs)
    header = ["run", "shard seed", *STAGES, "pipeline s", f"{HEADLINE} acc1 %",
              *(["validation acc1 %"] if val else []), "load before/after"]  # fmt: skip
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, run in enumerate(runs, 1):
        cells = [str(i), str(run["shard_seed"]), *(f"{run['stages_s'][s]:.1f}" for s in STAGES)]
        cells += [f"{run['pipeline_s']:.1f}", f"{100 * run['acc1'][HEADLINE]:.2f}"]
        cells += [f"{100 * run['val_acc1']:.2f}"] if val else []
        cells.append(f"{run['load_before']:.1f} / {run['load_after']:.1f}")
        rows.append("| " + " | ".join(cells) + " |")
    cells = ["spread", "", *(f"{spread([r['stages_s'][s] for r in runs]):.1f}" for s in STAGES)]
    cells += [f"{spread([r['pipeline_s'] for r in runs]):.1f}"]
    cells += [f"{100 * spread([r['acc1'][HEADLINE] for r in runs]):.2f}"]
    cells += [f"{100 * spread([r['val_acc1'] for r in runs]):.2f}"] if val else []
    cells += [""]
    rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_results(args: argparse.Namespace, setup_s: float, runs: list[dict[str, Any]]) -> None:
    report = table(runs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"config": str(args.config), "web_size": args.web_size, "setup_s": round(setup_s, 1),
           "cpus": os.cpu_count(), "runs": runs, "table": report}  # fmt: skip
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=2))
    (RESULTS / f"{args.name}.md").write_text(report + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    parser.add_argument("--port", type=int, default=8765, help="where the demo web is served")
    parser.add_argument("--web-size", default="demo", choices=("demo", "test"))
    parser.add_argument("--keep", type=Path, help="copy the last run's storage root here")
    parser.add_argument("--name", default="demo", help="results file name (bench/results/NAME)")
    parser.add_argument("--shard-seeds", type=lambda v: [int(x) for x in v.split(",")],
                        help="run i uses shard.seed SEEDS[i %% len] (default: the config's)")  # fmt: skip
    parser.add_argument("--validation", action="store_true",
                        help="also score each run on Fashion-MNIST train images the web never shows")  # fmt: skip
    args = parser.parse_args()
    (REPO / "data").mkdir(exist_ok=True)
    setup_s = set_up(args.config, args.web_size)
    if args.validation:
        build_validation(args.web_size)
    print(f"set-up (demo web, benchmark sets): {setup_s:.1f}s")
    runs: list[dict[str, Any]] = []
    for i in range(args.runs):
        seed = None if not args.shard_seeds else args.shard_seeds[i % len(args.shard_seeds)]
        runs.append(
            one_run(args.config, args.port, args.web_size, args.keep, seed, args.validation)
        )
        print(f"run {i + 1}: {json.dumps(runs[-1])}", flush=True)
        write_results(args, setup_s, runs)  # after every run: a long bench keeps what it has
    print(table(runs))
    print(f"wrote {RESULTS / args.name}.json")


if __name__ == "__main__":
    main()
