"""The near-duplicate matcher's verified similarity (``tasks.curate.near_dup``) between one
image and others, computed when a page shows them: curate keeps only its verdicts."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tasks.curate.near_dup import image_thumbnail, pair_similarity, thumbnails_array


def _thumbnail(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image_thumbnail(image)


def matcher_similarities(reference: bytes, others: list[bytes | None]) -> list[float | None]:
    """Similarity of each of ``others`` to ``reference`` (None where an image is missing or
    unreadable), as curate's matcher verifies a candidate pair: 1.0 is the same picture."""
    try:
        ref = thumbnails_array([_thumbnail(reference)])
    except OSError:
        return [None] * len(others)
    thumbs: list[bytes] = []
    present: list[int] = []
    for i, data in enumerate(others):
        try:
            if data is not None:
                thumbs.append(_thumbnail(data))
                present.append(i)
        except OSError:
            continue
    found: list[float | None] = [None] * len(others)
    if thumbs:
        cols = np.arange(len(thumbs))
        scores = pair_similarity(ref, thumbnails_array(thumbs), np.zeros_like(cols), cols)
        for i, score in zip(present, scores.tolist(), strict=True):
            found[i] = score
    return found
