"""Language identification with langid.py, whose model ships inside the package (no download)."""

from __future__ import annotations

import threading
from functools import cache

import numpy as np
from langid.langid import LanguageIdentifier, model

_LOADING = threading.Lock()


def _identifier() -> LanguageIdentifier:
    """The model, loaded once per process (~1.2 s: bz2 and unpickling). Curate's shard tasks
    are threads that all start at once; unlocked, each of them loaded its own copy."""
    with _LOADING:
        return _loaded()


@cache
def _loaded() -> LanguageIdentifier:
    # norm_probs gives a probability in [0, 1], so the confidence threshold is meaningful.
    return LanguageIdentifier.from_modelstring(model, norm_probs=True)


def identify_language(text: str | None) -> tuple[str | None, float | None]:
    """(ISO 639-1 code, probability) of a caption; (None, None) for an empty one."""
    if text is None or not text.strip():
        return None, None
    identifier = _identifier()
    # langid's own classify dots a dense uint32 feature vector with the float32 model, which
    # upcasts all 7,480 x 97 weights on every call (~40 ms); a caption touches ~100 features.
    counts = identifier.instance2fv(text)
    active = np.flatnonzero(counts)
    scores = counts[active].astype(np.float64) @ identifier.nb_ptc[active] + identifier.nb_pc
    probs = identifier.norm_probs(scores)
    best = int(np.argmax(probs))
    return str(identifier.nb_classes[best]), float(probs[best])
