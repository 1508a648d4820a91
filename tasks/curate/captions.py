"""The caption normal form that dedup and the boilerplate rule compare, and the word count
the short-caption rule reads (no heavy imports: the inspect app and the rules import it
without the feature extractor's image stack)."""

from __future__ import annotations

import re
import unicodedata

import regex

_SPACES = re.compile(r"\s+")
_EDGE_PUNCTUATION = re.compile(r"^[\W_]+|[\W_]+$")
# Scripts written without spaces between words.
_UNSPACED = regex.compile(
    r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}]"
)
_WORD_BOUNDARY = regex.compile(r"(?wV1)\b")  # WORD: Unicode's default word boundaries
_WORD_CHARACTER = regex.compile(r"\w")


def normalise_caption(caption: str | None) -> str | None:
    """NFKC, lower case, single spaces, no punctuation at either end (what dedup compares)."""
    if caption is None:
        return None
    text = _SPACES.sub(" ", unicodedata.normalize("NFKC", caption).lower()).strip()
    return _EDGE_PUNCTUATION.sub("", text)


def caption_word_count(caption: str | None) -> int:
    """Words: whitespace tokens, except that a token holding a script written without spaces
    (Chinese, Japanese, Thai...) counts the words Unicode's default word boundaries find in
    it (UAX #29: each ideograph or kana, a katakana run as one). "冬用の黒いコート" is 6
    words, where whitespace saw 1; "IMG_1234.JPG" stays 1."""
    if not caption:
        return 0
    count = 0
    for token in caption.split():
        if _UNSPACED.search(token):
            pieces = _WORD_BOUNDARY.split(token)
            count += sum(1 for piece in pieces if _WORD_CHARACTER.search(piece))
        else:
            count += 1
    return count
