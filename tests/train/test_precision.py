"""One process, no launcher: every precision mode, gradient accumulation, gradient clipping,
the logit-scale clamp and the resume check run through the real training loop (a world of
one)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from model.loss import ClipLoss
from model.train import Distributed, build_state, make_loader, train, train_step
from model.train_config import TrainRun
from model.train_step import make_loss
from tests.train.conftest import read_metrics


@pytest.mark.parametrize(
    ("precision", "accum_steps"), [("amp_bf16", 2), ("amp_fp16", 1), ("fp32", 1)]
)
def test_precisions_and_accumulation_train(
    fashion_shards: Path, tmp_path: Path, precision: str, accum_steps: int
) -> None:
    torch.set_num_threads(1)
    cfg = TrainRun(
        shards=str(fashion_shards), output=str(tmp_path), batch_size=16, samples=16 * 3 * accum_steps,
        precision=precision, accum_steps=accum_steps, workers=0, log_every_steps=1, warmup=1,
        lr=1e-3, resume=None, checkpoint_every_steps=100,
    )  # fmt: skip
    summary = train(cfg, Distributed(rank=0, world=1, device=torch.device("cpu")))
    assert (summary["step"], summary["samples_seen"]) == (3, 48 * accum_steps)
    records = read_metrics(tmp_path)
    assert len(records) == 3 and all(math.isfinite(r["loss"]) for r in records)
    assert all(r["logit_scale"] <= 100 for r in records)
    assert (tmp_path / "checkpoints" / "step_3.pt").exists()
    checkpoint = torch.load(tmp_path / "checkpoints" / "latest.pt", weights_only=True)
    assert checkpoint["config"]["precision"] == precision
    assert ("scale" in checkpoint["scaler"]) == (precision == "amp_fp16")


def test_logit_scale_is_clamped_at_100(fashion_shards: Path, tmp_path: Path) -> None:
    cfg = TrainRun(
        shards=str(fashion_shards), output=str(tmp_path), batch_size=8, samples=8, workers=0,
        resume=None, precision="fp32",
    )  # fmt: skip
    env = Distributed(0, 1, torch.device("cpu"))
    state = build_state(cfg, env, total_steps=1)
    with torch.no_grad():
        state.model.logit_scale.fill_(math.log(1000))
    loader, _ = make_loader(cfg, env, state.model, None)
    train_step(state, loader, cfg, env, ClipLoss())
    assert state.model.logit_scale.exp().item() == pytest.approx(100, rel=1e-5)


def test_grad_clip_norm_clips_the_unscaled_gradient_under_fp16(
    fashion_shards: Path, tmp_path: Path
) -> None:
    env = Distributed(0, 1, torch.device("cpu"))
    norms = {}
    for clip in (None, 0.05):
        cfg = TrainRun(
            shards=str(fashion_shards), output=str(tmp_path), batch_size=8, samples=8, workers=0,
            resume=None, precision="amp_fp16", grad_clip_norm=clip,
        )  # fmt: skip
        torch.manual_seed(0)
        state = build_state(cfg, env, total_steps=1)
        seen: list[float] = []
        params = list(state.model.parameters())

        def record_norm(*_: object, _seen: list[float] = seen, _params: list = params) -> None:
            # Runs inside optimizer.step, after GradScaler has unscaled the gradients.
            grads = [p.grad.norm() for p in _params if p.grad is not None]
            _seen.append(torch.linalg.vector_norm(torch.stack(grads)).item())

        state.optimizer.register_step_pre_hook(record_norm)
        loader, _ = make_loader(cfg, env, state.model, None)
        train_step(state, loader, cfg, env, make_loss("clip", True))
        norms[clip] = seen[0]
    assert norms[None] > 0.1, "without clipping the (unscaled) gradient is larger"
    assert norms[0.05] == pytest.approx(0.05, rel=1e-3)


def test_a_resume_that_changes_the_schedule_is_refused_unless_forced(
    fashion_shards: Path, tmp_path: Path
) -> None:
    env = Distributed(0, 1, torch.device("cpu"))
    base = {"shards": str(fashion_shards), "output": str(tmp_path), "batch_size": 8,
            "workers": 0, "precision": "fp32", "checkpoint_every_steps": 1}  # fmt: skip
    train(TrainRun(**base, samples=16, resume=None), env)
    for change in ({"samples": 32}, {"workers": 1}):
        with pytest.raises(ValueError, match=f"{next(iter(change))}: .* -> .*force_resume"):
            train(TrainRun(**{**base, "samples": 16, **change}), env)
    summary = train(TrainRun(**base, samples=32, force_resume=True), env)
    assert summary["step"] == 4 and summary["samples_seen"] == 32
