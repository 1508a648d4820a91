"""``train.host_collectives``: model.train on two ranks with the gradient all-reduce and the
loss's gathers through shared memory ends with the same weights and losses as through gloo,
bit for bit (the demo's model and settings)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.train.conftest import finish, read_metrics, torchrun, write_run_config

pytestmark = pytest.mark.timeout(400)
DEMO_LIKE = {
    "model": "clipflow-tiny-p7", "samples": 12 * 64, "grad_clip_norm": 1.0, "workers": 0,
    "token_rows": "used", "pin_cpu_cores": True, "log_every_steps": 1, "decoded_cache_mb": 8,
}  # fmt: skip


def test_shared_memory_collectives_train_the_same_weights_as_gloo(
    fashion_shards: Path, tmp_path: Path
) -> None:
    runs = {}
    for host in (False, True):
        folder = tmp_path / ("host" if host else "gloo")
        proc = torchrun(
            write_run_config(folder, fashion_shards, host_collectives=host, **DEMO_LIKE)
        )
        out = finish(proc)
        assert proc.returncode == 0, out[-3000:]
        assert ("through shared memory" in out) == host
        runs[host] = (
            torch.load(folder / "train" / "checkpoints" / "latest.pt", weights_only=True),
            [r["loss"] for r in read_metrics(folder / "train")],
        )
    (gloo, gloo_losses), (host, host_losses) = runs[False], runs[True]
    assert len(host_losses) == 12 and host_losses == gloo_losses
    differ = [k for k, v in gloo["state_dict"].items() if not torch.equal(v, host["state_dict"][k])]
    assert differ == []
    for a, b in zip(
        gloo["optimizer"]["state"].values(), host["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
