"""JPEG decode, crop and resize of a whole batch on a torch device: nvJPEG on CUDA.

With ``train.decode_device: cuda`` the loader's reader processes only parse each JPEG's
header and draw its crop (``model.data``); the training process then decodes the batch here
with ``torchvision.io.decode_jpeg`` (one batched nvJPEG call) and crops, resizes and flips it
on the GPU. The CPU is left with reading tars, shuffling and tokenising.

The resize is torch's bicubic with antialiasing (Keys' a = -0.5, the kernel PIL uses), so on
the same decoded pixels the result is PIL's ``resize(BICUBIC, box=...)`` to within rounding
(``tests/train/test_device_decode.py`` bounds the difference). The decoders themselves may
differ slightly (libjpeg-turbo's and nvJPEG's IDCT and chroma upsampling).
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)


def require_device(name: str) -> torch.device:
    """The device ``train.decode_device`` names; refuses ``cuda`` where no GPU is visible."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"train.decode_device is {name!r} but no CUDA GPU is visible "
            "(torch.cuda.is_available() is False): set train.decode_device: cpu"
        )
    return device


def _decode_all(data: list[Tensor], device: torch.device) -> list[Tensor | None]:
    """Each JPEG as a (3, H, W) uint8 tensor on ``device``; None where it does not decode.
    One batched call; after a failure (the call returns nothing then), one call per image."""
    # Imported here, not at the top: model.data and model.train import this module, and
    # torchvision's package import (~1.4 s with the torch._dynamo it pulls in) is then paid
    # only where a GPU decode runs.
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image decoders in favour of TorchCodec.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            pass
        out: list[Tensor | None] = []
        for one in data:
            try:
                out.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=device))
            except RuntimeError as e:
                log.warning("skipped a JPEG that does not decode on %s: %s", device, e)
                out.append(None)
        return out


def decode_crops(
    jpegs: list[bytes], boxes: Tensor, flips: Tensor, size: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Decode ``jpegs`` on ``device``, crop each to its ``boxes`` row (left, top, right,
    bottom), resize it to ``size`` x ``size`` (bicubic, antialiased), mirror it where
    ``flips``; returns uint8 (N, size, size, 3) on ``device`` and a bool mask of the images
    that decoded (the rows of the others are zeros)."""
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]
    decoded = _decode_all(data, device)
    out = torch.zeros((len(jpegs), 3, size, size), dtype=torch.uint8, device=device)
    for i, (image, box, flip) in enumerate(
        zip(decoded, boxes.tolist(), flips.tolist(), strict=True)
    ):
        if image is None:
            continue
        left, top, right, bottom = box
        crop = image[None, :, top:bottom, left:right].float()
        # Width, then height, rounded to 8 bits in between, as PIL resamples.
        wide = F.interpolate(crop, (bottom - top, size), mode="bicubic", antialias=True)
        wide = wide.round_().clamp_(0, 255)
        resized = F.interpolate(wide, (size, size), mode="bicubic", antialias=True)
        pixels = resized.round_().clamp_(0, 255).to(torch.uint8)[0]
        out[i] = pixels.flip(-1) if flip else pixels
    ok = torch.tensor([image is not None for image in decoded], dtype=torch.bool)
    return out.permute(0, 2, 3, 1), ok
