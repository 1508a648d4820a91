"""CLIP's image preprocessing with torchvision, as OpenCLIP's ``image_transform`` builds it."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image
from torchvision import transforms as T

OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)


def _convert_to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def image_transform(
    image_size: int,
    is_train: bool,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    train_crop_scale: tuple[float, float] = (0.9, 1.0),
) -> T.Compose:
    """A transform from a PIL image to a normalised (3, image_size, image_size) float tensor.

    Evaluation: bicubic resize of the short side, centre crop. Training: random resized crop
    covering ``train_crop_scale`` of the area (OpenCLIP's default (0.9, 1.0)). Both convert
    to RGB and normalise with CLIP's mean and std unless ``mean`` / ``std`` are given.
    """
    normalize = T.Normalize(mean or OPENAI_DATASET_MEAN, std or OPENAI_DATASET_STD)
    bicubic = T.InterpolationMode.BICUBIC
    geometry: list[object]
    if is_train:
        geometry = [T.RandomResizedCrop(image_size, scale=train_crop_scale, interpolation=bicubic)]
    else:
        geometry = [T.Resize(image_size, interpolation=bicubic), T.CenterCrop(image_size)]
    return T.Compose([*geometry, _convert_to_rgb, T.ToTensor(), normalize])
