"""Two "nodes" on one machine: two torchrun launchers, one rank each, meet at a c10d
rendezvous on 127.0.0.1 and train as one job of world size 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_s3 import free_port
from tests.train.conftest import REPO, finish, read_metrics, tiny_env, write_run_config

pytestmark = pytest.mark.timeout(400)


def test_two_nodes_train_together(fashion_shards: Path, tmp_path: Path) -> None:
    config = write_run_config(tmp_path, fashion_shards, samples=8 * 64, log_every_steps=4)
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                endpoint,
                "--rdzv-id",
                "two-nodes",
                "-m",
                "model.train",
                "--config",
                str(config),
            ],
            cwd=REPO,
            env=tiny_env(),
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for _ in range(2)
    ]
    outputs = [finish(node) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(outputs)[-3000:]
    summary = json.loads((tmp_path / "train" / "summary.json").read_text())
    # 512 samples at 32 per rank: 8 steps only if both nodes' ranks took part.
    assert (summary["step"], summary["samples_seen"]) == (8, 512)
    checkpoint = __import__("torch").load(
        tmp_path / "train" / "checkpoints" / "latest.pt", weights_only=True
    )
    assert len(checkpoint["loader_state"]) == 2 and len(checkpoint["rng_state"]) == 2
    assert [r["step"] for r in read_metrics(tmp_path / "train")] == [4, 8]
