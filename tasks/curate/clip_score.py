"""CLIP scores (cosine similarity of image and caption embeddings, the LAION / DataComp
filter) and image embeddings for SemDeDup, from a checkpoint named in config.

torch and ``model/`` are imported only when a checkpoint is configured.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

BATCH = 64


class ClipScorer:
    """Embeds images and captions with one CLIP checkpoint (CPU, or GPU when present)."""

    def __init__(self, checkpoint: str, model_name: str) -> None:
        import torch

        from model import (
            create_model,
            get_model_config,
            get_tokenizer,
            image_transform,
            load_checkpoint,
        )

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = create_model(model_name)
        load_checkpoint(self.model, checkpoint)
        self.model.eval().to(self.device)
        size = get_model_config(model_name).vision.image_size
        self.transform = image_transform(size, is_train=False)
        self.tokenizer = get_tokenizer(model_name)
        log.info("CLIP scorer: %s (%s) on %s", checkpoint, model_name, self.device)

    def image_embeddings(self, images: list[Image.Image]) -> np.ndarray:
        """(n, d) float32 L2-normalised image embeddings."""
        return self._embed([self.transform(im) for im in images], self.model.encode_image)

    def text_embeddings(self, texts: list[str]) -> np.ndarray:
        """(n, d) float32 L2-normalised caption embeddings."""
        if not texts:
            return np.empty((0, 0), np.float32)
        tokens = self.tokenizer(texts)
        return self._embed(list(tokens), self.model.encode_text)

    def _embed(self, items: list[Any], encode: Any) -> np.ndarray:
        out = []
        with self.torch.no_grad():
            for start in range(0, len(items), BATCH):
                batch = self.torch.stack(items[start : start + BATCH]).to(self.device)
                out.append(encode(batch, normalize=True).float().cpu().numpy())
        return np.concatenate(out) if out else np.empty((0, 0), np.float32)


@cache
def clip_scorer(checkpoint: str, model_name: str) -> ClipScorer:
    """One scorer per process and checkpoint (mapped shard tasks reuse it)."""
    return ClipScorer(checkpoint, model_name)


def clip_scores(
    scorer: ClipScorer, images: list[Image.Image], captions: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(scores (n,), image embeddings (n, d)): cosine similarity of each image and caption."""
    if not images:
        return np.empty(0, np.float64), np.empty((0, 0), np.float32)
    image_emb = scorer.image_embeddings(images)
    text_emb = scorer.text_embeddings(captions)
    return (image_emb * text_emb).sum(axis=1).astype(np.float64), image_emb
