"""The languages curate's language ID (``tasks.curate.language``: langid.py and fastText's
lid.176) can name.

A code outside these in ``curate.allowed_languages`` ("eng", "en-US", "english") would never
be named, so the rule would drop every caption it judges. The config refuses such codes
instead. Kept here, not read from the models, so that parsing a config loads neither (langid
takes ~1.2 s); ``tests/curate/test_units.py`` checks both lists against the models.
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

FASTTEXT_LANGUAGES = frozenset([
    "af", "als", "am", "an", "ar", "arz", "as", "ast", "av", "az", "azb", "ba", "bar",
    "bcl", "be", "bg", "bh", "bn", "bo", "bpy", "br", "bs", "bxr", "ca", "cbk", "ce", "ceb",
    "ckb", "co", "cs", "cv", "cy", "da", "de", "diq", "dsb", "dty", "dv", "el", "eml", "en",
    "eo", "es", "et", "eu", "fa", "fi", "fr", "frr", "fy", "ga", "gd", "gl", "gn", "gom",
    "gu", "gv", "he", "hi", "hif", "hr", "hsb", "ht", "hu", "hy", "ia", "id", "ie", "ilo",
    "io", "is", "it", "ja", "jbo", "jv", "ka", "kk", "km", "kn", "ko", "krc", "ku", "kv",
    "kw", "ky", "la", "lb", "lez", "li", "lmo", "lo", "lrc", "lt", "lv", "mai", "mg", "mhr",
    "min", "mk", "ml", "mn", "mr", "mrj", "ms", "mt", "mwl", "my", "myv", "mzn", "nah",
    "nap", "nds", "ne", "new", "nl", "nn", "no", "oc", "or", "os", "pa", "pam", "pfl", "pl",
    "pms", "pnb", "ps", "pt", "qu", "rm", "ro", "ru", "rue", "sa", "sah", "sc", "scn",
    "sco", "sd", "sh", "si", "sk", "sl", "so", "sq", "sr", "su", "sv", "sw", "ta", "te",
    "tg", "th", "tk", "tl", "tr", "tt", "tyv", "ug", "uk", "ur", "uz", "vec", "vep", "vi",
    "vls", "vo", "wa", "war", "wuu", "xal", "xmf", "yi", "yo", "yue", "zh",
])  # fmt: skip
"""The 176 labels of fastText's lid.176: ISO 639-1 where there is a code, else ISO 639-2/3
("ceb", "war") or Wikipedia's ("als", "bh", "eml")."""

IDENTIFIED_LANGUAGES = LANGID_LANGUAGES | FASTTEXT_LANGUAGES
"""What ``allowed_languages`` may hold (183 codes): a language only one identifier names can
still pass, with at most half of the mean probability."""
