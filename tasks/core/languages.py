"""The languages curate's language ID (langid.py, ``tasks.curate.language``) can name.

A code outside this set in ``curate.allowed_languages`` ("eng", "en-US", "english") would
never equal what the identifier emits, so the rule would drop every caption it judges. The
config refuses such codes instead. Kept here, not read from langid's model, so that parsing a
config does not load the model (~1.2 s); ``tests/curate/test_units.py`` checks the two agree.
"""

from __future__ import annotations

LANGID_LANGUAGES = frozenset([
    "af", "am", "an", "ar", "as", "az", "be", "bg", "bn", "br", "bs", "ca", "cs", "cy", "da",
    "de", "dz", "el", "en", "eo", "es", "et", "eu", "fa", "fi", "fo", "fr", "ga", "gl", "gu",
    "he", "hi", "hr", "ht", "hu", "hy", "id", "is", "it", "ja", "jv", "ka", "kk", "km", "kn",
    "ko", "ku", "ky", "la", "lb", "lo", "lt", "lv", "mg", "mk", "ml", "mn", "mr", "ms", "mt",
    "nb", "ne", "nl", "nn", "no", "oc", "or", "pa", "pl", "ps", "pt", "qu", "ro", "ru", "rw",
    "se", "si", "sk", "sl", "sq", "sr", "sv", "sw", "ta", "te", "th", "tl", "tr", "ug", "uk",
    "ur", "vi", "vo", "wa", "xh", "zh", "zu",
])  # fmt: skip
"""ISO 639-1 codes (97), as langid.py's bundled model names its classes."""
