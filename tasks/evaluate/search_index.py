"""The image-embedding index that ``clipflow inspect`` searches: every training image (the
shard stage's tars) embedded with the evaluated checkpoint, in FAISS.

    {root}/eval/search/images.faiss     inner-product index over unit image embeddings (D,)
    {root}/eval/search/images.parquet   one row per index row: row, key, shard, ext, offset,
                                        size (the image member's bytes in the shard tar)

Flat (exact) up to ``FLAT_MAX_ROWS`` images; beyond it IVF, trained on the embeddings.
"""

from __future__ import annotations

import io
import logging
import math
import posixpath
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

from model.tario import image_extension, member_index
from tasks.core.storage import Storage

log = logging.getLogger(__name__)

FLAT_MAX_ROWS = 200_000
"""Up to this many images an exact search is fast enough for one user; beyond it IVF."""
IVF_NPROBE = 16


def search_index_uris(storage: Storage) -> dict[str, str]:
    return {
        "index": storage.uri("eval", "search", "images.faiss"),
        "rows": storage.uri("eval", "search", "images.parquet"),
    }


def _shard_images(storage: Storage, uri: str) -> list[tuple[str, str, int, int, bytes]]:
    """(key, extension, offset, size, bytes) of every sample's image in one shard tar."""
    with storage.open(uri, "rb") as fh:
        index = member_index(fh, uri)
        found = []
        for key, members in index.items():
            ext = image_extension(members)
            if ext is None:
                continue
            offset, size = members[ext]
            fh.seek(offset)
            found.append((key, ext, offset, size, fh.read(size)))
    return found


@torch.inference_mode()
def _embed(lm: Any, images: list[bytes]) -> np.ndarray:
    """Unit image embeddings (N, D) float32."""
    batch = []
    for data in images:
        with Image.open(io.BytesIO(data)) as image:
            batch.append(lm.transform(image.convert("RGB")))
    features = lm.model.encode_image(torch.stack(batch).to(lm.device)).float()
    return F.normalize(features, dim=-1).cpu().numpy().astype(np.float32)


def _index_for(vectors: np.ndarray) -> faiss.Index:
    n, dim = vectors.shape
    if n <= FLAT_MAX_ROWS:
        flat = faiss.IndexFlatIP(dim)
        flat.add(vectors)
        return flat
    ivf = faiss.IndexIVFFlat(
        faiss.IndexFlatIP(dim), dim, int(4 * math.sqrt(n)), faiss.METRIC_INNER_PRODUCT
    )
    ivf.train(vectors)
    ivf.nprobe = IVF_NPROBE
    ivf.add(vectors)
    ivf.make_direct_map()  # reconstruct(row), for image -> nearest neighbours
    return ivf


def build_search_index(storage: Storage, lm: Any, batch_size: int) -> dict[str, Any]:
    """Embed every image of ``{root}/shards/*.tar`` with ``lm`` (a loaded model) and write
    the index and its rows; returns their URIs and the image count."""
    shards = storage.glob("shards/*.tar")
    if not shards:
        raise FileNotFoundError(f"{storage.uri('shards')}: no shard tars to index")
    columns: dict[str, list[Any]] = {k: [] for k in ("key", "shard", "ext", "offset", "size")}
    chunks: list[np.ndarray] = []
    pending: list[bytes] = []
    for uri in shards:
        for key, ext, offset, size, data in _shard_images(storage, uri):
            for column, value in zip(columns, (key, posixpath.basename(uri), ext, offset, size),
                                     strict=True):  # fmt: skip
                columns[column].append(value)
            pending.append(data)
            if len(pending) == batch_size:
                chunks.append(_embed(lm, pending))
                pending = []
    if pending:
        chunks.append(_embed(lm, pending))
    vectors = np.concatenate(chunks)
    uris = search_index_uris(storage)
    storage.write_bytes(uris["index"], faiss.serialize_index(_index_for(vectors)).tobytes())
    table = pa.table({"row": np.arange(len(vectors), dtype=np.int64), **columns})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    storage.write_bytes(uris["rows"], sink.getvalue())
    log.info("search index: %d training images embedded (%d dims)", *vectors.shape)
    return {**uris, "images": len(vectors)}
