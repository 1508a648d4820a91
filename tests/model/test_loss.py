"""Losses against OpenCLIP's, and the distributed loss against the single-process one."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from open_clip.loss import ClipLoss as RefClipLoss
from open_clip.loss import SigLipLoss as RefSigLipLoss

from model.loss import ClipLoss, SigLipLoss
from tests.model.dist_worker import (
    LOCAL_BATCH,
    WORLD,
    features,
    loss_of,
    rank_main,
    siglip_rank_main,
)


@pytest.mark.parametrize("local_loss", [True, False])
def test_clip_loss_equals_open_clip(local_loss: bool) -> None:
    img, txt = features(0)
    scale = torch.tensor(14.3)
    ours = ClipLoss(local_loss=local_loss)(img, txt, scale)
    ref = RefClipLoss()(img, txt, scale)
    assert torch.allclose(ours, ref, atol=1e-6)
    # Not a constant: matched pairs give a lower loss than shuffled ones.
    assert ClipLoss()(img, img, scale) < ours


def test_siglip_loss_equals_open_clip() -> None:
    img, txt = features(1)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    ours = SigLipLoss()(img, txt, scale, bias)
    ref = RefSigLipLoss()(img, txt, scale, bias)
    assert torch.allclose(ours, ref, atol=1e-5)


def _single_process(kind: str, seed: int) -> dict[str, torch.Tensor]:
    img, txt = (t.requires_grad_() for t in features(seed))
    scale = torch.tensor(12.0, requires_grad=True)
    loss = loss_of(kind, img, txt, scale)
    loss.backward()
    return {"loss": loss.detach(), "img": img.grad, "txt": txt.grad, "scale": scale.grad}


def test_two_process_gloo_loss_and_gradients_equal_single_process(tmp_path) -> None:
    kinds = ["local", "global", "siglip"]
    mp.spawn(
        rank_main, args=(str(tmp_path / "init"), str(tmp_path), kinds), nprocs=WORLD, join=True
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    # The local loss's gather carries gradient back (an all-to-all per gathered tensor); the
    # global loss gathers once without autograd, so its backward pass communicates nothing.
    for r in ranks:
        assert r["local"]["backward_collectives"] == ["_AllGatherBackward"] * 2
        assert r["global"]["backward_collectives"] == []
    for seed, kind in enumerate(kinds):
        single = _single_process(kind, seed)
        per_rank = [r[kind] for r in ranks]
        # DDP averages over ranks: the mean rank loss is the loss over the whole batch.
        mean_loss = torch.stack([r["loss"] for r in per_rank]).mean()
        assert torch.allclose(mean_loss, single["loss"], atol=1e-6), kind
        mean_scale_grad = torch.stack([r["scale"] for r in per_rank]).mean()
        assert torch.allclose(mean_scale_grad, single["scale"], atol=1e-6), kind
        for name in ("img", "txt"):
            # Each rank's features get the gradient of every rank's loss (all_gather's
            # backward sums them), i.e. WORLD x the gradient of the mean loss.
            grads = torch.cat([r[name] for r in per_rank]) / WORLD
            assert torch.allclose(grads, single[name], atol=1e-6), (kind, name)


def test_siglip_neighbour_exchange_over_four_ranks_equals_single_process(tmp_path) -> None:
    """4 ranks: one bidirectional round (texts to both neighbours), then one shift right;
    every rank's images meet every rank's texts exactly once."""
    world = 4
    mp.spawn(siglip_rank_main, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world)
    ranks = [torch.load(tmp_path / f"siglip{r}.pt", weights_only=True) for r in range(world)]
    img, txt = (t.requires_grad_() for t in features(5, world * LOCAL_BATCH))
    scale = torch.tensor(12.0, requires_grad=True)
    single = SigLipLoss()(img, txt, scale, torch.tensor(-5.0))
    single.backward()
    # SigLIP divides by the local batch: the single-process loss is the ranks' sum / world.
    total = torch.stack([r["loss"] for r in ranks]).sum() / world
    assert torch.allclose(total, single.detach(), atol=1e-5)
    scale_grad = torch.stack([r["scale"] for r in ranks]).sum() / world
    assert torch.allclose(scale_grad, scale.grad, atol=1e-5)
    for name, grad in (("img", img.grad), ("txt", txt.grad)):
        assert torch.allclose(torch.cat([r[name] for r in ranks]) / world, grad, atol=1e-6), name
