"""The gradient of one optimizer step: the contrastive loss over every micro-batch at once.

A contrastive loss does not split over micro-batches: each sample's negatives are the whole
batch. So, as OpenCLIP does (``accum_freq``), every micro-batch's features are first
computed without gradient and cached; then each micro-batch is run again with gradient and
its live features replace its cached ones in the whole batch's loss. The towers' gradients
summed over the micro-steps are those of one pass over the whole batch. Only the last
micro-step lets DDP all-reduce (``no_sync`` before it).

The loss is computed in fp32 with autocast off: the features are cast first, so a
bf16/fp16 run does not lose the logits' precision (the scale multiplies them by up to 100).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from model.host_collectives import HostGroup
from model.loss import ClipLoss, SigLipLoss

AUTOCAST = {"fp32": None, "amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}
Batch = tuple[Tensor, Tensor]  # normalised images (B, 3, S, S), token ids (B, T), on device


def make_loss(loss: str, local_loss: bool, host: HostGroup | None = None) -> nn.Module:
    """The training loss by its config name (``clip`` or ``siglip``). ``host`` carries the
    CLIP loss's gathers (SigLIP's neighbour exchange stays on the process group)."""
    if loss == "siglip":
        return SigLipLoss()
    return ClipLoss(local_loss=local_loss, host=host)


def _loss_in_fp32(loss_fn: nn.Module, device_type: str, *inputs: Tensor) -> Tensor:
    with torch.autocast(device_type, enabled=False):
        return loss_fn(*(x.float() for x in inputs))


def _share(x: Tensor, parts: int) -> Tensor:
    """``x`` with 1/parts of its gradient: each of the ``parts`` micro-steps scores the whole
    batch, so the temperature (and bias) would otherwise get ``parts`` times theirs."""
    return x.detach() + (x - x.detach()) / parts


def accumulate_gradients(
    ddp: nn.Module,
    batches: list[Batch],
    loss_fn: nn.Module,
    precision: str,
    scaler: torch.amp.GradScaler,
    distributed: bool,
) -> Tensor:
    """Backpropagate the loss of the concatenation of ``batches`` (one rank's micro-batches)
    into ``.grad``, one micro-batch's activations at a time; returns that loss, detached.

    ``ddp`` returns (image features, text features, scale[, bias]) as ``CLIP.forward``; with
    ``distributed`` it is a DistributedDataParallel and only the last backward all-reduces.
    """
    dtype = AUTOCAST[precision]
    device_type = batches[0][0].device.type

    def autocast() -> AbstractContextManager[Any]:
        return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)

    if len(batches) == 1:
        with autocast():
            outputs = ddp(*batches[0])
        loss = _loss_in_fp32(loss_fn, device_type, *outputs)
        scaler.scale(loss).backward()
        return loss.detach()
    with torch.no_grad(), autocast():
        cached = [ddp(*batch)[:2] for batch in batches]  # K x (image (B, D), text (B, D))
    parts = len(batches)
    for j, batch in enumerate(batches):
        last = j == parts - 1
        sync = nullcontext() if last or not distributed else ddp.no_sync()  # type: ignore[operator]
        with sync:
            with autocast():
                live_images, live_texts, *temperature = ddp(*batch)
            images = torch.cat([*(c[0] for c in cached[:j]), live_images,
                                *(c[0] for c in cached[j + 1:])])  # fmt: skip
            texts = torch.cat([*(c[1] for c in cached[:j]), live_texts,
                               *(c[1] for c in cached[j + 1:])])  # fmt: skip
            shared = [_share(t, parts) for t in temperature]
            loss = _loss_in_fp32(loss_fn, device_type, images, texts, *shared)  # (K*B rows)
            scaler.scale(loss).backward()
    return loss.detach()
