"""CLIP itself: tokenizer, image and text towers, contrastive loss, checkpoint I/O.

The public API mirrors OpenCLIP's::

    from model import create_model, get_tokenizer, image_transform, load_checkpoint
    m = create_model("ViT-B-32")            # or "RN50", "clipflow-tiny", a JSON path, a dict
    tok = get_tokenizer()                   # CLIP's BPE; get_tokenizer(vocab_path) for a trained one
    img_f, txt_f, logit_scale = m(images, tok(texts))

Names are imported on first use, so ``import model.loss`` in a spawned worker does not pay
for torchvision and the tokenizer stack. This package never imports Prefect, DuckDB or
img2dataset.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.checkpoint import load_checkpoint
    from model.clip import CLIP, create_model
    from model.config import (
        ModelConfig,
        ResNetConfig,
        TextConfig,
        VisionConfig,
        get_model_config,
        list_models,
    )
    from model.loss import ClipLoss, SigLipLoss
    from model.tokenizer import ClipTokenizer, get_tokenizer, train_tokenizer
    from model.transforms import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, image_transform

_EXPORTS = {
    "load_checkpoint": "model.checkpoint",
    "CLIP": "model.clip",
    "create_model": "model.clip",
    "ModelConfig": "model.config",
    "ResNetConfig": "model.config",
    "TextConfig": "model.config",
    "VisionConfig": "model.config",
    "get_model_config": "model.config",
    "list_models": "model.config",
    "ClipLoss": "model.loss",
    "SigLipLoss": "model.loss",
    "ClipTokenizer": "model.tokenizer",
    "get_tokenizer": "model.tokenizer",
    "train_tokenizer": "model.tokenizer",
    "OPENAI_DATASET_MEAN": "model.transforms",
    "OPENAI_DATASET_STD": "model.transforms",
    "image_transform": "model.transforms",
}

__all__ = [
    "CLIP",
    "OPENAI_DATASET_MEAN",
    "OPENAI_DATASET_STD",
    "ClipLoss",
    "ClipTokenizer",
    "ModelConfig",
    "ResNetConfig",
    "SigLipLoss",
    "TextConfig",
    "VisionConfig",
    "create_model",
    "get_model_config",
    "get_tokenizer",
    "image_transform",
    "list_models",
    "load_checkpoint",
    "train_tokenizer",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
