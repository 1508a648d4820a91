"""Benchmark: what Prefect costs a `clipflow run`, against Prefect's defaults.

On a storage root where every stage is up to date (run `make demo` first), `clipflow run
CONFIG` skips all six stages, so its wall time is the orchestration alone: imports, Prefect's
temporary server, the pipeline flow and its six stage subflows. The peer runs the same
pipeline flow the way Prefect does by default (the temporary server started at the first
flow call, a heartbeat thread per flow run), in the same environment:

    python -c "from flows.pipeline import pipeline_flow; pipeline_flow(config=...)"

    .venv/bin/python bench/bench_prefect_overhead.py            # 5 runs each, in turn
    .venv/bin/python bench/bench_prefect_overhead.py --runs 3 --config configs/demo.yaml

Prints each side's best and median wall seconds and the ratio of medians; writes
bench/results/prefect_overhead.json. (flows/temporary_server.py says what clipflow does.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tasks.core.config import ALLOW_PRIVATE_ENV, load_config  # noqa: E402
from tasks.core.lineage import pipeline_status  # noqa: E402
from tasks.core.storage import Storage  # noqa: E402
from tasks.stages import STAGES  # noqa: E402

RESULTS = REPO / "bench" / "results" / "prefect_overhead.json"
PEER = (
    "import sys; from flows.cli import _prefect_defaults; _prefect_defaults(); "
    "from flows.pipeline import pipeline_flow; from tasks.core.config import load_config; "
    "pipeline_flow(config=load_config(sys.argv[1]))"
)


def commands(config: Path) -> dict[str, list[str]]:
    python = sys.executable
    return {
        "clipflow run": [str(Path(python).with_name("clipflow")), "run", str(config)],
        "Prefect defaults": [python, "-c", PEER, str(config)],
    }


def timed(command: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    started = time.monotonic()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**env, ALLOW_PRIVATE_ENV: "1"})  # fmt: skip
    wall = time.monotonic() - started
    skipped = (proc.stderr + proc.stdout).count("is up to date; skipped")
    if proc.returncode or skipped != len(STAGES):
        raise SystemExit(f"{command[:2]} failed or ran a stage:\n{proc.stderr[-3000:]}")
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    os.environ[ALLOW_PRIVATE_ENV] = "1"
    cfg = load_config(args.config)
    statuses = pipeline_status(Storage(cfg.storage), cfg)
    stale = [name for name, status in statuses.items() if status.state != "done"]
    if stale:
        raise SystemExit(f"{stale} not up to date under {cfg.storage.root}: run `make demo` first")
    sides = commands(args.config)
    walls: dict[str, list[float]] = {name: [] for name in sides}
    for run in range(args.runs):
        for name, command in sides.items():
            walls[name].append(timed(command))
            print(f"run {run + 1}: {name:<17} {walls[name][-1]:6.2f} s", flush=True)
    print(f"\n{'':<17} {'best s':>8} {'median s':>9}")
    for name, values in walls.items():
        print(f"{name:<17} {min(values):8.2f} {statistics.median(values):9.2f}")
    ratio = statistics.median(walls["Prefect defaults"]) / statistics.median(walls["clipflow run"])
    saved = statistics.median(walls["Prefect defaults"]) - statistics.median(walls["clipflow run"])
    print(f"Prefect defaults / clipflow run (medians): {ratio:.2f}x, {saved:.1f} s saved per run")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "config": str(args.config), "walls_s": walls,
        "ratio_of_medians": round(ratio, 3), "saved_s": round(saved, 2),
    }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
