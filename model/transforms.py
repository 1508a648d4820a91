"""CLIP's image preprocessing, as OpenCLIP's ``image_transform`` builds it: torchvision's
``Compose`` for training, torchvision's arithmetic on the PIL image for evaluation
(``EvalTransform``).

torchvision is imported where the training transform is built, not at the top: the trainer
reads this module's mean and std, and evaluation needs none of it; its package import costs
~1.4 s (torch._dynamo, through torchvision.ops).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from torchvision import transforms as T

OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)


def _convert_to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def _train_compose(
    image_size: int, mean: Sequence[float], std: Sequence[float], scale: tuple[float, float]
) -> T.Compose:
    """OpenCLIP's training transform: a bicubic random resized crop covering ``scale`` of
    the area, RGB, ToTensor, Normalize."""
    from torchvision import transforms as T

    crop = T.RandomResizedCrop(image_size, scale=scale, interpolation=T.InterpolationMode.BICUBIC)
    return T.Compose([crop, _convert_to_rgb, T.ToTensor(), T.Normalize(mean, std)])


class EvalTransform:
    """CLIP's evaluation transform, OpenCLIP's (torchvision's ``Resize(image_size,
    BICUBIC)``, ``CenterCrop(image_size)``, RGB, ``ToTensor``, ``Normalize``), done on the
    PIL image directly with torchvision's arithmetic: the short side resized to
    ``image_size`` and the long one to ``int(image_size * long / short)`` (no resize when
    that is the image's size already), the crop's offsets rounded from the centre, then the
    same elementwise float32 operations in the same order. The tensor is OpenCLIP's bit for
    bit (tests/model/test_clip.py); per 28 px image it takes ~28 us against the Compose's
    ~70, and evaluation never imports torchvision (~1.4 s: torch._dynamo, through
    torchvision.ops).
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self._normalisers: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}

    def _normaliser(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean and std as (3, 1, 1) tensors of ``dtype``: torchvision's ``Normalize``
        makes them for every image, here once per dtype (a quarter of the per-image time)."""
        if dtype not in self._normalisers:
            mean = torch.as_tensor(self.mean, dtype=dtype).view(-1, 1, 1)
            std = torch.as_tensor(self.std, dtype=dtype).view(-1, 1, 1)
            self._normalisers[dtype] = mean, std
        return self._normalisers[dtype]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        side = self.image_size
        width, height = image.size
        short, long = min(width, height), max(width, height)
        if short != side:  # Resize: torchvision skips it when the size would not change
            new_long = int(side * long / short)
            size = (side, new_long) if width <= height else (new_long, side)
            image = image.resize(size, Image.Resampling.BICUBIC)
        width, height = image.size
        top, left = int(round((height - side) / 2.0)), int(round((width - side) / 2.0))
        image = image.crop((left, top, left + side, top + side)).convert("RGB")
        # ToTensor: (H, W, 3) uint8 -> (3, H, W) in the default float dtype, divided by 255.
        pixels = torch.from_numpy(np.array(image, np.uint8, copy=True))
        tensor = pixels.permute(2, 0, 1).contiguous().to(torch.get_default_dtype()).div(255)
        # Normalize: the mean and std as tensors of that dtype, subtracted then divided.
        mean, std = self._normaliser(tensor.dtype)
        return tensor.sub_(mean).div_(std)

    def __repr__(self) -> str:
        return f"EvalTransform(image_size={self.image_size}, mean={self.mean}, std={self.std})"


def image_transform(
    image_size: int,
    is_train: bool,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    train_crop_scale: tuple[float, float] = (0.9, 1.0),
) -> Callable[[Image.Image], torch.Tensor]:
    """A transform from a PIL image to a normalised (3, image_size, image_size) float tensor.

    Evaluation: bicubic resize of the short side, centre crop (``EvalTransform``). Training:
    random resized crop covering ``train_crop_scale`` of the area (OpenCLIP's default (0.9,
    1.0)), a torchvision ``Compose``. Both convert to RGB and normalise with CLIP's mean and
    std unless ``mean`` / ``std`` are given.
    """
    mean, std = mean or OPENAI_DATASET_MEAN, std or OPENAI_DATASET_STD
    if is_train:
        return _train_compose(image_size, mean, std, train_crop_scale)
    return EvalTransform(image_size, mean, std)
