"""Natural alt-text phrasings for the demo web's images.

Fashion-MNIST captions always contain the class name (singular or plural: "sneakers" contains
"sneaker"), sometimes next to a synonym, and never take the shape of a CLIP prompt template
("a photo of a {c}.", or the bare "{c}"), so zero-shot evaluation prompts stay unseen text.
"""

from __future__ import annotations

import random
import re

# Per class: forms that contain the class name (singular, plural), then synonyms.
FASHION_FORMS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "t-shirt": ("t-shirt", "t-shirts", ("tee", "top")),
    "trouser": ("pair of trousers", "trousers", ("pants", "slacks")),
    "pullover": ("pullover", "pullovers", ("sweater", "jumper")),
    "dress": ("dress", "dresses", ("frock", "gown")),
    "coat": ("coat", "coats", ("overcoat", "parka")),
    "sandal": ("pair of sandals", "sandals", ("flip-flops", "slides")),
    "shirt": ("shirt", "shirts", ("button-down", "blouse")),
    "sneaker": ("pair of sneakers", "sneakers", ("trainers", "running shoes")),
    "bag": ("bag", "bags", ("handbag", "tote")),
    "ankle boot": ("pair of ankle boots", "ankle boots", ("boots", "booties")),
}

_ADJECTIVES = (
    "black", "white", "grey", "navy", "red", "striped", "cotton", "wool", "oversized",
    "cosy", "plain", "faded", "vintage", "lightweight", "warm", "brand new", "second-hand",
    "olive green", "checked", "slim", "classic", "cheap", "designer", "washed",
)  # fmt: skip
_WHEN = ("last year", "on holiday", "yesterday", "for my birthday", "last summer", "online")
_OCCASION = ("the winter", "the office", "the weekend", "the gym", "a wedding", "autumn walks")

_SINGULAR = (
    "my new {adj} {n} for {occ}",
    "{adj} {n} on sale this week",
    "found this {adj} {n} at a thrift store",
    "{adj} {n}, barely worn",
    "the {n} my sister gave me {when}",
    "{n} for sale, {adj}, good condition",
    "vintage {n} from the flea market",
    "selling my {adj} {n} (like new)",
    "our best-selling {adj} {n}",
    "{art} {adj} {n} hanging in the wardrobe",
    "{adj} {n} - free shipping",
    "just got this {n} in the mail",
    "my favourite {n}, the {syn} I wear every day",
    "the {adj} {n} from the new collection",
    "{art} {n} I bought {when}",
    "{adj} {n}, also sold as a {syn}",
    "wearing my {adj} {n} to {occ}",
    "look at this {adj} {n}!",
)  # fmt: skip
_PLURAL = (
    "new {p} for {occ}",
    "{adj} {p} on sale",
    "a pile of {adj} {p}",
    "{p} in stock now, {adj} and cheap",
    "cleared out my closet: old {p}",
    "{adj} {p} ({syn}) for every season",
    "we restocked the {adj} {p}",
)  # fmt: skip

_EMOJI = (
    "{name} emoji",
    "the {name} icon on my phone",
    "sticker: {name}",
    "cute {name} sticker",
    "emoji showing {art} {name}",
    "{name} (emoji)",
)  # fmt: skip
_CLIPART = (
    "clip art of {art} {name}",
    "{name} illustration",
    "{name}, {folder} clipart",
    "free {name} clipart",
    "vector drawing: {name}",
)  # fmt: skip


_ART = "\x00"


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _with_articles(text: str) -> str:
    """Replace each article placeholder by "a" or "an", chosen by the word that follows it."""
    return re.sub(f"{_ART} (\\S)", lambda m: f"{_article(m.group(1))} {m.group(1)}", text)


def fashion_caption(class_name: str, rng: random.Random) -> str:
    """A shopping-or-wardrobe style caption naming ``class_name`` (a FASHION_MNIST_CLASSES item)."""
    singular, plural, synonyms = FASHION_FORMS[class_name]
    adj = rng.choice(_ADJECTIVES)
    fields = {
        "adj": adj,
        "n": singular,
        "p": plural,
        "syn": rng.choice(synonyms),
        "when": rng.choice(_WHEN),
        "occ": rng.choice(_OCCASION),
    }
    template = rng.choice(_PLURAL if rng.random() < 0.25 else _SINGULAR)
    caption = _with_articles(template.format(art=_ART, **fields))
    return caption[0].upper() + caption[1:] if rng.random() < 0.3 else caption


def emoji_caption(name: str, rng: random.Random) -> str:
    """An alt text for an emoji, from its Unicode name."""
    return _with_articles(rng.choice(_EMOJI).format(name=name, art=_ART))


def clipart_caption(name: str, folder: str, rng: random.Random) -> str:
    """An alt text for an openclipart image, from its cleaned file name and category folder."""
    return _with_articles(rng.choice(_CLIPART).format(name=name, folder=folder, art=_ART))
