"""Contrastive losses over a batch that may be spread across ``torch.distributed`` ranks.

Under ``torch.distributed`` each rank gathers every rank's features *with* gradient
(``torch.distributed.nn.all_gather``), so the negatives from other ranks train this rank's
towers too. Every rank must pass the same local batch size (``drop_last``).

- ``ClipLoss``: symmetric InfoNCE (CLIP). With ``local_loss`` (the default) a rank scores
  only its own rows against the global batch, memory O(B_local x B_global); the mean over
  ranks (which DDP's gradient averaging takes) is the loss over the whole global batch.
  Without it every rank scores the whole global batch, memory O(B_global^2), and needs no
  collective in the backward pass: the features are gathered once, without autograd, and
  only a rank's own rows carry gradient (scaled so that DDP's average is the same gradient;
  ``_gather_global_batch``). On two CPU ranks that saves the backward's two all-to-alls.
- ``SigLipLoss``: SigLIP's pairwise sigmoid loss, local rows against all columns. The text
  features travel between neighbouring ranks (OpenCLIP's bidirectional exchange), one
  block at a time, so a rank holds O(B_local x B_local) logits, never the gathered batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn
import torch.nn.functional as F
from torch import Tensor, nn

from model.host_collectives import HostGroup


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: Tensor, host: HostGroup | None = None) -> Tensor:
    """All ranks' rows in rank order, (B_local, D) -> (B_global, D); gradients flow back to
    the rank that owns each row. Through ``host``'s shared memory when given, else gloo."""
    _, world = _rank_and_world()
    if world == 1:
        return x
    if host is not None:
        return host.gather_with_grad(x)
    return torch.cat(torch.distributed.nn.all_gather(x), dim=0)


def _times_gradient(x: Tensor, factor: float) -> Tensor:
    """``x`` (the same values, bit for bit) with ``factor`` times its gradient."""
    return x.detach() + (x - x.detach()) * factor


def _gather_global_batch(
    image_features: Tensor, text_features: Tensor, rank: int, world: int, host: HostGroup | None
) -> tuple[Tensor, Tensor]:
    """Every rank's image and text rows in rank order, in one all-gather without autograd:
    only this rank's own rows are live tensors. Every rank then computes the same global
    loss L, but its backward reaches only its own rows, with their part of dL; their
    gradient is multiplied by ``world``, so that DDP's mean over the ranks is dL itself, as
    with the gradient-carrying gather (whose backward sums every rank's part onto each row's
    owner, an all-to-all per gathered tensor)."""
    width = image_features.shape[1]
    both = torch.cat([image_features, text_features], dim=1)
    if host is not None:
        parts = list(host.all_gather(both))
    else:
        parts = [torch.empty_like(both) for _ in range(world)]
        dist.all_gather(parts, both.detach().contiguous())
    parts[rank] = _times_gradient(both, world)
    everyone = torch.cat(parts)
    return everyone[:, :width], everyone[:, width:]


class ClipLoss(nn.Module):
    """Symmetric cross-entropy over image-text similarities; pairs share a row index. With
    ``host`` (``model/host_collectives.py``) the features are gathered through its shared
    memory instead of gloo: the same values and gradients."""

    def __init__(self, local_loss: bool = True, host: HostGroup | None = None) -> None:
        super().__init__()
        self.local_loss = local_loss
        self.host = host

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor | None = None,
    ) -> Tensor:
        """Unit features (B_local, D) each and the (exp'd) scale -> scalar loss."""
        rank, world = _rank_and_world()
        if self.local_loss:
            all_images = gather_with_grad(image_features, self.host)
            all_texts = gather_with_grad(text_features, self.host)
            logits_per_image = logit_scale * image_features @ all_texts.T  # (B_l, B_g)
            logits_per_text = logit_scale * text_features @ all_images.T  # (B_l, B_g)
            offset = rank * image_features.shape[0]
        else:
            all_images, all_texts = (
                _gather_global_batch(image_features, text_features, rank, world, self.host)
                if world > 1
                else (image_features, text_features)
            )
            logits_per_image = logit_scale * all_images @ all_texts.T  # (B_g, B_g)
            logits_per_text = logits_per_image.T
            offset = 0
        if logit_bias is not None:
            logits_per_image = logits_per_image + logit_bias
            logits_per_text = logits_per_text + logit_bias
        labels = torch.arange(logits_per_image.shape[0], device=image_features.device) + offset
        return (
            F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
        ) / 2


def _exchange(send: list[tuple[int, Tensor]], receive_from: list[int]) -> list[Tensor]:
    """Send each (rank, tensor) and receive one tensor shaped like the first from each rank."""
    received = [torch.empty_like(send[0][1]) for _ in receive_from]
    ops = [dist.P2POp(dist.isend, t.contiguous(), peer) for peer, t in send]
    ops += [dist.P2POp(dist.irecv, t, peer) for peer, t in zip(receive_from, received, strict=True)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


class _NeighbourExchange(torch.autograd.Function):
    """Tensors to the left and right neighbours -> (from the right, from the left); gradients
    travel back the same way."""

    @staticmethod
    def forward(ctx: Any, left: int, right: int, to_left: Tensor, to_right: Tensor) -> Any:
        ctx.left, ctx.right = left, right
        from_right, from_left = _exchange([(left, to_left), (right, to_right)], [right, left])
        return from_right, from_left

    @staticmethod
    def backward(ctx: Any, grad_from_right: Tensor, grad_from_left: Tensor) -> Any:
        # What came from the right goes back to the right, and so on.
        to_left, to_right = _exchange(
            [(ctx.right, grad_from_right), (ctx.left, grad_from_left)], [ctx.left, ctx.right]
        )
        return None, None, to_left, to_right


class _ShiftRight(torch.autograd.Function):
    """A tensor to the right neighbour -> the left neighbour's; gradients go back left."""

    @staticmethod
    def forward(ctx: Any, left: int, right: int, tensor: Tensor) -> Tensor:
        ctx.left, ctx.right = left, right
        return _exchange([(right, tensor)], [left])[0]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:
        return None, None, _exchange([(ctx.left, grad)], [ctx.right])[0]


def _sigmoid_block(
    image_features: Tensor, text_features: Tensor, scale: Tensor, bias: Tensor, matched: bool
) -> Tensor:
    """Sum of -log sigmoid(label x logit) over one (B, B) block, divided by B; the diagonal
    is positive when the block pairs a rank's images with its own texts."""
    logits = scale * image_features @ text_features.T + bias  # (B, B)
    labels = -torch.ones_like(logits)
    if matched:
        labels += 2 * torch.eye(len(logits), device=logits.device, dtype=logits.dtype)
    return -F.logsigmoid(labels * logits).sum() / image_features.shape[0]


class SigLipLoss(nn.Module):
    """Binary (sigmoid) loss on every image-text pair: matched pairs positive, the rest
    negative; summed over pairs, divided by the local batch size as in SigLIP.

    Over ranks, OpenCLIP's ``bidir`` scheme: each round passes text blocks one rank left and
    one rank right, so after ``(world - 1) / 2`` rounds every rank has scored its images
    against every rank's texts, each block exactly once.
    """

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor,
    ) -> Tensor:
        """Unit features (B_local, D) each, exp'd scale and bias -> scalar loss."""
        rank, world = _rank_and_world()
        loss = _sigmoid_block(image_features, text_features, logit_scale, logit_bias, True)
        if world == 1:
            return loss
        left, right = (rank - 1) % world, (rank + 1) % world
        to_left = to_right = text_features
        rounds, odd = divmod(world - 1, 2)
        for _ in range(rounds):
            to_left, to_right = _NeighbourExchange.apply(left, right, to_left, to_right)
            for block in (to_left, to_right):
                loss = loss + _sigmoid_block(image_features, block, logit_scale, logit_bias, False)
        if odd:
            block = _ShiftRight.apply(left, right, to_right)
            loss = loss + _sigmoid_block(image_features, block, logit_scale, logit_bias, False)
        return loss
