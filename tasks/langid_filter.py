"""Language identification with langid.py, whose model ships inside the package (no download)."""

from __future__ import annotations

from functools import cache

from langid.langid import LanguageIdentifier, model


@cache
def _identifier() -> LanguageIdentifier:
    # norm_probs gives a probability in [0, 1], so the confidence threshold is meaningful.
    return LanguageIdentifier.from_modelstring(model, norm_probs=True)


def identify_language(text: str | None) -> tuple[str | None, float | None]:
    """(ISO 639-1 code, probability) of a caption; (None, None) for an empty one."""
    if text is None or not text.strip():
        return None, None
    language, probability = _identifier().classify(text)
    return str(language), float(probability)
