"""Contrastive losses over a batch that may be spread across ``torch.distributed`` ranks.

Under ``torch.distributed`` each rank gathers every rank's features *with* gradient
(``torch.distributed.nn.all_gather``), so the negatives from other ranks train this rank's
towers too. Every rank must pass the same local batch size (``drop_last``).

- ``ClipLoss``: symmetric InfoNCE (CLIP). With ``local_loss`` (the default) a rank scores
  only its own rows against the global batch, memory O(B_local x B_global); the mean over
  ranks (which DDP's gradient averaging takes) is the loss over the whole global batch.
- ``SigLipLoss``: SigLIP's pairwise sigmoid loss, local rows against all columns.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn
import torch.nn.functional as F
from torch import Tensor, nn


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: Tensor) -> Tensor:
    """All ranks' rows in rank order, (B_local, D) -> (B_global, D); gradients flow back to
    the rank that owns each row."""
    _, world = _rank_and_world()
    if world == 1:
        return x
    return torch.cat(torch.distributed.nn.all_gather(x), dim=0)


class ClipLoss(nn.Module):
    """Symmetric cross-entropy over image-text similarities; pairs share a row index."""

    def __init__(self, local_loss: bool = True) -> None:
        super().__init__()
        self.local_loss = local_loss

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor | None = None,
    ) -> Tensor:
        """Unit features (B_local, D) each and the (exp'd) scale -> scalar loss."""
        rank, world = _rank_and_world()
        all_images = gather_with_grad(image_features)
        all_texts = gather_with_grad(text_features)
        if self.local_loss:
            logits_per_image = logit_scale * image_features @ all_texts.T  # (B_l, B_g)
            logits_per_text = logit_scale * text_features @ all_images.T  # (B_l, B_g)
            offset = rank * image_features.shape[0]
        else:
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


class SigLipLoss(nn.Module):
    """Binary (sigmoid) loss on every image-text pair: matched pairs positive, the rest
    negative; summed over pairs, divided by the local batch size as in SigLIP."""

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor,
    ) -> Tensor:
        """Unit features (B_local, D) each, exp'd scale and bias -> scalar loss."""
        rank, _ = _rank_and_world()
        B = image_features.shape[0]
        all_texts = gather_with_grad(text_features)
        logits = logit_scale * image_features @ all_texts.T + logit_bias  # (B_l, B_g)
        labels = -torch.ones_like(logits)
        rows = torch.arange(B, device=logits.device)
        labels[rows, rows + rank * B] = 1.0
        return -F.logsigmoid(labels * logits).sum() / B
