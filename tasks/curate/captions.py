"""The caption normal form that dedup and the boilerplate rule compare (no heavy imports:
the inspect app and the rules import it without the feature extractor's image stack)."""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")
_EDGE_PUNCTUATION = re.compile(r"^[\W_]+|[\W_]+$")


def normalise_caption(caption: str | None) -> str | None:
    """NFKC, lower case, single spaces, no punctuation at either end (what dedup compares)."""
    if caption is None:
        return None
    text = _SPACES.sub(" ", unicodedata.normalize("NFKC", caption).lower()).strip()
    return _EDGE_PUNCTUATION.sub("", text)
