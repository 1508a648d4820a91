"""Zero-shot image-text retrieval: recall@k in both directions, as CLIP_benchmark counts it.

Each image may have several captions. Text-to-image ("image retrieval"): for each caption,
is its image among the k images scored highest? Image-to-text ("text retrieval"): for each
image, is at least one of its captions among the k captions scored highest? Both are
averaged over queries; key names are CLIP_benchmark's (``image_retrieval_recall@5``, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


@dataclass(frozen=True)
class PairEmbeddings:
    """Unit image embeddings (N, D), unit caption embeddings (M, D), and for each caption the
    index of its image (M,)."""

    images: Tensor
    texts: Tensor
    text_image: Tensor


@torch.inference_mode()
def embed_pairs(
    model: Any,
    tokenizer: Callable[[list[str]], Tensor],
    loader: Iterable[tuple[Tensor, Sequence[Sequence[str]]]],
    device: str | torch.device = "cpu",
) -> PairEmbeddings:
    """Embed every image and every one of its captions from (images, [captions]) batches."""
    images: list[Tensor] = []
    texts: list[Tensor] = []
    owners: list[int] = []
    seen = 0
    for batch_images, batch_captions in loader:
        flat = [c for captions in batch_captions for c in captions]
        owners.extend(seen + i for i, captions in enumerate(batch_captions) for _ in captions)
        seen += len(batch_captions)
        images.append(F.normalize(model.encode_image(batch_images.to(device)).float(), dim=-1))
        texts.append(F.normalize(model.encode_text(tokenizer(flat).to(device)).float(), dim=-1))
    if not images:
        raise ValueError("embed_pairs: the loader yielded no images")
    log.info("retrieval: %d images, %d captions", seen, len(owners))
    return PairEmbeddings(
        torch.cat(images).cpu(), torch.cat(texts).cpu(), torch.tensor(owners, dtype=torch.long)
    )


def _hits_at_k(scores: Tensor, positives: Tensor, k: int) -> Tensor:
    """(Q,) bool: any positive among each query row's top-k columns."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices  # (Q, k)
    return positives.gather(1, top).any(dim=1)


def retrieval_recall(
    pairs: PairEmbeddings, ks: Sequence[int] = DEFAULT_KS, chunk: int = 4096
) -> dict[str, float]:
    """``image_retrieval_recall@k`` (text->image) and ``text_retrieval_recall@k``
    (image->text) for each k, as fractions; queries are scored ``chunk`` rows at a time."""
    n_images, n_texts = len(pairs.images), len(pairs.texts)
    out: dict[str, float] = {}
    for direction, queries, keys in (
        ("image", pairs.texts, pairs.images),
        ("text", pairs.images, pairs.texts),
    ):
        hits = {k: 0 for k in ks}
        for start in range(0, len(queries), chunk):
            rows = torch.arange(start, min(start + chunk, len(queries)))
            scores = queries[rows] @ keys.t()  # (q, keys)
            if direction == "image":  # query = caption, its one positive is its image
                positives = torch.zeros(len(rows), n_images, dtype=torch.bool)
                positives[torch.arange(len(rows)), pairs.text_image[rows]] = True
            else:  # query = image, positives are all of its captions
                positives = pairs.text_image.view(1, n_texts) == rows.view(-1, 1)
            for k in ks:
                hits[k] += int(_hits_at_k(scores, positives, k).sum())
        for k in ks:
            out[f"{direction}_retrieval_recall@{k}"] = hits[k] / len(queries)
    return out
