"""Gradient accumulation is large-batch contrastive training: K micro-batches of B give the
gradient of one batch of K*B (OpenCLIP's feature caching), on one rank and on 2 gloo ranks."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from tests.train.accum_worker import WORLD, compare_runs, rank_main

LOSSES = ["clip", "siglip"]


def assert_same_gradient(full: dict, accumulated: dict, what: str) -> None:
    assert accumulated["loss"].item() == pytest.approx(full["loss"].item(), rel=1e-5), what
    assert full["grads"].keys() == accumulated["grads"].keys(), what
    a = torch.cat([g.flatten() for g in full["grads"].values()])
    b = torch.cat([accumulated["grads"][n].flatten() for n in full["grads"]])
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    assert cosine >= 0.99999, f"{what}: cosine {cosine:.6f}"
    assert b.norm().item() == pytest.approx(a.norm().item(), rel=1e-4), what
    for name in ("logit_scale", "logit_bias"):  # scored K times, counted once
        if name in full["grads"]:
            want, got = full["grads"][name].item(), accumulated["grads"][name].item()
            assert got == pytest.approx(want, rel=1e-4, abs=1e-6), (what, name)


@pytest.mark.parametrize("loss", LOSSES)
def test_accumulated_gradient_is_the_full_batch_gradient(loss: str) -> None:
    torch.set_num_threads(1)
    runs = compare_runs(loss)
    assert_same_gradient(runs["full"], runs["accumulated"], loss)


def test_accumulated_gradient_is_the_full_batch_gradient_on_two_ranks(tmp_path) -> None:
    mp.spawn(rank_main, args=(str(tmp_path / "init"), str(tmp_path), LOSSES), nprocs=WORLD)
    for rank in range(WORLD):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for loss in LOSSES:
            runs = results[loss]
            assert_same_gradient(runs["full"], runs["accumulated"], f"{loss}, rank {rank}")


def test_the_loss_is_computed_in_fp32_under_autocast() -> None:
    from model.clip import create_model
    from model.train_step import accumulate_gradients, make_loss
    from tests.train.accum_worker import global_batch

    torch.manual_seed(0)
    model = create_model("clipflow-tiny")
    images, texts = global_batch(8)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for batches in ([(images, texts)], [(images[:4], texts[:4]), (images[4:], texts[4:])]):
        loss = accumulate_gradients(
            model, batches, make_loss("clip", True), "amp_bf16", scaler, False
        )
        assert loss.dtype == torch.float32
