"""Deterministic, deliberately awkward caption corpora for tokenizer parity tests and benchmarks.

Every string mixes segments of one or more kinds: plain ASCII captions, accented and
non-Latin scripts, CJK, emoji (ZWJ sequences, skin tones, flags), mojibake, HTML entities,
control characters and unusual whitespace, special-token text, random code points, very long
text and empty strings.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

_COMMON_TEXT = (
    "a an the of on in with and photo picture image close-up view small large old new red blue "
    "green black white two three dog cat man woman child car tree house street city beach sky "
    "sunset food plate table window logo icon vector illustration stock free download hd 4k"
)
_COMMON = _COMMON_TEXT.split()
_WORDS = _COMMON + [w for name in IMAGENET_CLASSNAMES for w in name.split()]
_PUNCT = list(".,;:!?-_/()[]{}\"'#@%*+=<>|~`^$\\")
_CONTRACTIONS = ["it's", "don't", "we're", "I've", "I'm", "you'll", "he'd", "IT'S", "Rock'n'Roll"]
_UNICODE_TEXT = (
    "café naïve façade jalapeño Zürich straße smørrebrød Ærø São Paulo İstanbul ΣΟΦΙΑ σοφός "
    "Москва привет مرحبا שלום नमस्ते สวัสดี 東京 北京烤鸭 こんにちは カタカナ 안녕하세요 "
    "ﬁnance ﬂower “quoted” ‘single’ – — … € £ ¥ © ® ™ ½ ² µ Ⅻ ｆｕｌｌｗｉｄｔｈ ǅ ﬀ Å Ω K"
)
_UNICODE_WORDS = _UNICODE_TEXT.split()
_EMOJI = [
    "😀",
    "🐶",
    "🍕",
    "❤️",
    "👍🏽",
    "👨‍👩‍👧‍👦",
    "🇫🇷",
    "🇯🇵",
    "🏳️‍🌈",
    "✨",
    "🔥",
    "👩🏿‍💻",
    "☕",
    "🧑‍🚀",
]
_ENTITIES = [
    "&amp;",
    "&lt;",
    "&gt;",
    "&quot;",
    "&#39;",
    "&#x27;",
    "&nbsp;",
    "&amp;amp;",
    "&copy;",
    "&#x1F600;",
    "&eacute;",
    "&",
    "AT&T",
    "&notanentity;",
    "&#0;",
    "&#65;",
]
_ODD_CHARS = [
    "\x00",
    "\x07",
    "\x0b",
    "\x0c",
    "\x1b[31m",
    "\x7f",
    "\t",
    "\n",
    "\r\n",
    "\u00a0",
    "\u2028",
    "\u3000",
    "\u200b",
    "\ufeff",
    "\u00ad",
    "\u0301",
    "\x85",
    "\x1c",
]
_SPECIALS = [
    "<start_of_text>",
    "<end_of_text>",
    "<START_OF_TEXT>",
    "(<start_of_text>",
    "x<end_of_text>y",
    "<|endoftext|>",
]


def _ascii_caption(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 14)):
        r = rng.random()
        if r < 0.7:
            word = rng.choice(_WORDS)
            parts.append(word.upper() if rng.random() < 0.1 else word.title() if r < 0.1 else word)
        elif r < 0.8:
            parts.append(rng.choice(_CONTRACTIONS))
        elif r < 0.9:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 7))))
        else:
            parts.append("".join(rng.choices(_PUNCT, k=rng.randint(1, 3))))
    return rng.choice([" ", "  ", " ", ", "]).join(parts)


def _unicode_words(rng: random.Random) -> str:
    return " ".join(rng.choices(_UNICODE_WORDS + _WORDS, k=rng.randint(1, 8)))


def _emoji(rng: random.Random) -> str:
    return "".join(
        rng.choice(_EMOJI) + rng.choice(["", " ", "x"]) for _ in range(rng.randint(1, 4))
    )


def _mojibake(rng: random.Random) -> str:
    text = _unicode_words(rng) + " " + rng.choice(_EMOJI)
    codec = rng.choice(["cp1252", "latin-1", "mac_roman"])
    return text.encode("utf-8").decode(codec, errors=rng.choice(["replace", "ignore"]))


def _entities(rng: random.Random) -> str:
    return " ".join(rng.choice(_ENTITIES + _WORDS) for _ in range(rng.randint(1, 6)))


def _odd_chars(rng: random.Random) -> str:
    return "".join(rng.choice(_ODD_CHARS) + rng.choice(_WORDS) for _ in range(rng.randint(1, 5)))


def _random_codepoints(rng: random.Random) -> str:
    chars = []
    for _ in range(rng.randint(1, 12)):
        cp = rng.choice(
            [
                rng.randint(0x20, 0x2FFF),
                rng.randint(0x3000, 0xD7FF),
                rng.randint(0xE000, 0xFFFD),
                rng.randint(0x10000, 0x1FAFF),
            ]
        )
        chars.append(chr(cp))
    return "".join(chars)


def _long_text(rng: random.Random) -> str:
    return " ".join(_ascii_caption(rng) for _ in range(rng.randint(10, 40)))


_KINDS: list[tuple[float, Callable[[random.Random], str]]] = [
    (0.40, _ascii_caption),
    (0.12, _unicode_words),
    (0.08, _emoji),
    (0.08, _mojibake),
    (0.08, _entities),
    (0.08, _odd_chars),
    (0.06, _random_codepoints),
    (0.04, _long_text),
    (0.03, lambda rng: rng.choice(_SPECIALS)),
    (0.03, lambda rng: rng.choice(["", " ", "\n", "\t \t"])),
]


def hard_strings(n: int, seed: int = 0) -> list[str]:
    """``n`` strings, each joining 1-3 segments of randomly chosen kinds."""
    rng = random.Random(seed)
    weights = [w for w, _ in _KINDS]
    makers = [m for _, m in _KINDS]
    out = []
    for _ in range(n):
        segments = [rng.choices(makers, weights)[0](rng) for _ in range(rng.choice([1, 1, 2, 3]))]
        out.append(rng.choice([" ", "", "\n"]).join(segments))
    return out


def prompt_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` real zero-shot prompts (OpenAI's ImageNet templates x class names), shuffled."""
    rng = random.Random(seed)
    prompts = [t(c) for c in IMAGENET_CLASSNAMES for t in OPENAI_IMAGENET_TEMPLATES]
    rng.shuffle(prompts)
    return [prompts[i % len(prompts)] for i in range(n)]


def web_captions(n: int, seed: int = 0, non_ascii_fraction: float = 0.1) -> list[str]:
    """``n`` alt-text-like captions: mostly ASCII, ``non_ascii_fraction`` of them mixed-script."""
    rng = random.Random(seed)
    return [
        hard_strings(1, seed=rng.randrange(2**31))[0]
        if rng.random() < non_ascii_fraction
        else _ascii_caption(rng)
        for _ in range(n)
    ]
