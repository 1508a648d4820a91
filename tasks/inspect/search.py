"""Search the training images with the trained model: text -> image through the FAISS
image-embedding index the evaluate stage writes (``tasks.evaluate.search_index``), and
image -> nearest neighbours from a sample's own stored embedding.

The model and the index load on first use (torch is slow to import), once per process.
"""

from __future__ import annotations

import threading
from typing import Any

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from tasks.core.config import PipelineConfig
from tasks.core.storage import Storage
from tasks.evaluate.search_index import search_index_uris
from tasks.evaluate.stage import default_checkpoint, load_model
from tasks.inspect.catalog import Catalog

Hit = tuple[str, float]
"""(sample key, cosine similarity)."""


class ImageSearch:
    """Text and image queries over the index; ``available()`` says whether both the index
    and the checkpoint exist."""

    def __init__(self, cfg: PipelineConfig, storage: Storage, catalog: Catalog) -> None:
        self.cfg = cfg
        self.storage = storage
        self.catalog = catalog
        self._lock = threading.Lock()
        self._index: faiss.Index | None = None
        self._model: Any = None

    def available(self) -> bool:
        uris = search_index_uris(self.storage)
        checkpoint = default_checkpoint(self.cfg, self.storage)
        return all(self.storage.exists(u) for u in (*uris.values(), checkpoint))

    def _loaded(self) -> tuple[faiss.Index, Any]:
        with self._lock:
            if self._index is None:
                data = self.storage.read_bytes(search_index_uris(self.storage)["index"])
                self._index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
                self._model = load_model(self.cfg, self.storage)
            return self._index, self._model

    def _hits(self, index: faiss.Index, vector: np.ndarray, k: int) -> list[Hit]:
        scores, rows = index.search(vector.reshape(1, -1).astype(np.float32), k)
        found = [(int(r), float(s)) for r, s in zip(rows[0], scores[0], strict=True) if r >= 0]
        keys = {
            int(r["row"]): str(r["key"])
            for r in self.catalog.search_rows("search_rows", {"rows": [r for r, _ in found]})
        }
        return [(keys[r], s) for r, s in found if r in keys]

    @torch.inference_mode()
    def by_text(self, text: str, k: int) -> list[Hit]:
        """The k training images closest to the text's embedding."""
        index, lm = self._loaded()
        tokens = lm.tokenizer([text]).to(lm.device)
        vector = F.normalize(lm.model.encode_text(tokens).float(), dim=-1)[0].cpu().numpy()
        return self._hits(index, vector, k)

    def by_image(self, key: str, k: int) -> list[Hit]:
        """The k training images closest to sample ``key``'s image (itself first); empty
        when the sample is not in the index (it was not kept)."""
        index, _ = self._loaded()
        rows = self.catalog.search_rows("search_row_of_key", {"key": key})
        if not rows:
            return []
        vector = index.reconstruct(int(rows[0]["row"]))
        return self._hits(index, np.asarray(vector), k)
