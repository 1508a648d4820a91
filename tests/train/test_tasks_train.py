"""The train stage's plain functions: the torchrun command line, resume decisions, and the
subprocess log streaming (on real subprocesses)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from tasks.core.config import TrainConfig, load_config
from tasks.core.storage import Storage
from tasks.train.launcher import can_resume, prepare_run, stream_process, torchrun_command


def test_single_node_is_standalone_and_multi_node_uses_c10d() -> None:
    single = torchrun_command(TrainConfig(nproc_per_node=2), "/c.yaml", run_id="demo")
    assert single[1:] == [
        "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
        "--nproc-per-node", "2", "-m", "model.train", "--config", "/c.yaml",
    ]  # fmt: skip
    multi = torchrun_command(
        TrainConfig(nnodes=4, nproc_per_node=8, rdzv_endpoint="node0:29400"), "/c.yaml", "run7"
    )
    joined = " ".join(multi)
    assert "--nnodes 4 --rdzv-backend c10d --rdzv-endpoint node0:29400 --rdzv-id run7" in joined
    assert "--standalone" not in multi and "--nproc-per-node 8" in joined


def test_resume_only_continues_the_same_experiment() -> None:
    base = {"model": "clipflow-tiny", "lr": 1e-3, "samples": 100, "data_fingerprint": "a"}
    assert can_resume(None, base) == (False, "no previous run")
    assert can_resume(base, {**base, "samples": 500, "workers": 4, "decoded_cache_mb": 64})[0]
    ok, reason = can_resume(base, {**base, "data_fingerprint": "b"})
    assert not ok and "data_fingerprint" in reason
    assert not can_resume(base, {**base, "lr": 2e-3})[0]


def test_a_changed_config_clears_the_old_run(tmp_path: Path) -> None:
    cfg = load_config({"storage": {"root": str(tmp_path)}, "train": {"lr": 1e-3}})
    storage = Storage(cfg.storage)
    prepare_run(cfg, storage)
    checkpoints = tmp_path / "train" / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "latest.pt").write_bytes(b"old")
    prepare_run(cfg, storage)  # same config: kept for resuming
    assert (checkpoints / "latest.pt").exists()
    changed = load_config({"storage": {"root": str(tmp_path)}, "train": {"lr": 2e-3}})
    prepare_run(changed, storage)
    assert not checkpoints.exists()
    saved = yaml.safe_load((tmp_path / "train" / "config.yaml").read_text())
    assert saved["lr"] == 2e-3 and saved["shards"] == str(tmp_path / "shards")


def test_stream_process_passes_lines_and_keeps_rank_errors() -> None:
    script = (
        "import sys\n"
        "sys.stdout.write('progress 1\\rprogress 2\\rdone\\n')\n"
        "print('x [rank 1] ERROR model.train: training failed: ValueError: bad shard')\n"
        "for i in range(100): print('noise', i)\n"
        "sys.exit(3)\n"
    )
    lines: list[str] = []
    result = stream_process([sys.executable, "-c", script], lines.append)
    assert result.code == 3
    assert lines[:3] == ["progress 1", "progress 2", "done"]
    assert result.tail[-1] == "noise 99" and len(result.tail) == 40
    message = result.failure_message()
    assert "exited with code 3" in message and "ValueError: bad shard" in message
