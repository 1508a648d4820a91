"""bench/bench_demo.py: each run's config, and the table with the spread between runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import yaml

from tasks.core.config import load_config

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_demo", REPO / "bench" / "bench_demo.py")
assert _spec is not None and _spec.loader is not None
bench_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_demo)


def test_run_config_moves_storage_and_port_and_still_validates(tmp_path):
    data = bench_demo.run_config(REPO / "configs" / "demo.yaml", tmp_path / "root", 8799)
    # Written elsewhere, the config must keep pointing at the repo's benchmark sets.
    path = tmp_path / "elsewhere" / "demo.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    assert cfg.storage.root == str(tmp_path / "root")
    assert cfg.crawl.seeds == ["http://127.0.0.1:8799/"]
    fashion = next(d for d in cfg.evaluate.datasets if d.name == "fashion_mnist")
    assert fashion.path == str(REPO / ".cache" / "benchmarks" / "fashion_mnist")
    assert cfg.train == load_config(REPO / "configs" / "demo.yaml").train
    assert cfg.shard == load_config(REPO / "configs" / "demo.yaml").shard


def test_a_shard_seed_changes_only_the_shard_order():
    demo = load_config(REPO / "configs" / "demo.yaml").model_dump(mode="json")
    data = bench_demo.run_config(REPO / "configs" / "demo.yaml", Path("/r"), 8765, shard_seed=3)
    assert data["shard"] == {**demo["shard"], "seed": 3}
    assert {k: v for k, v in data.items() if k not in ("shard", "storage")} == {
        k: v for k, v in demo.items() if k not in ("shard", "storage")
    }


def _run(seconds: float, acc1: float, shard_seed: int = 0) -> dict:
    stages = dict.fromkeys(bench_demo.STAGES, seconds)
    return {"shard_seed": shard_seed, "stages_s": stages, "pipeline_s": 6 * seconds, "acc1": {"fashion_mnist": acc1},
            "load_before": 2.0, "load_after": 3.0}  # fmt: skip


def test_table_has_a_row_per_run_and_the_spread():
    rows = bench_demo.table([_run(10.0, 0.83), _run(12.5, 0.8512, 1)]).splitlines()
    assert len(rows) == 2 + 2 + 1  # header, rule, two runs, spread
    assert rows[2].startswith("| 1 | 0 | 10.0 |") and "| 83.00 |" in rows[2]
    assert rows[3].startswith("| 2 | 1 | 12.5 |")
    spread = rows[-1].split(" | ")
    assert spread[0] == "| spread" and spread[2:8] == ["2.5"] * 6
    assert spread[8] == "15.0" and spread[9] == "2.12"


def test_clipflow_runs_the_checkout_the_benchmark_lives_in(tmp_path):
    # The venv's `clipflow` script imports through the editable install, i.e. the checkout the
    # venv was installed from; a copy of the benchmark in another checkout (a git worktree of
    # a lever under test) must run that checkout's code, not the install's.
    worktree = tmp_path / "worktree"
    (worktree / "bench").mkdir(parents=True)
    (worktree / "bench" / "bench_demo.py").write_text(
        (REPO / "bench" / "bench_demo.py").read_text()
    )
    (worktree / "flows").mkdir()
    (worktree / "flows" / "__init__.py").write_text("")
    (worktree / "flows" / "cli.py").write_text(
        "import sys\n\ndef main():\n    print('worktree code', sys.argv[1:])\n    return 0\n"
    )
    script = (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('b', {str(worktree / 'bench' / 'bench_demo.py')!r})\n"
        "b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b)\n"
        "code, output = b.clipflow('status', 'x.yaml')\n"
        "print('exit', code); print(output)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:2] == ["exit 0", "worktree code ['status', 'x.yaml']"], (
        out.stdout
    )
