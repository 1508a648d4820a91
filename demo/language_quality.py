"""Ground truth for curate's language rule: captions whose language is known, built from text
that ships offline inside ``clip-benchmark`` (a dev dependency), used by
``bench/bench_language_quality.py`` and ``tests/curate/test_language_quality.py``.

English, three kinds of caption (``kind``):

    en_prompt   OpenAI's 80 ImageNet prompt templates (CLIP's zero-shot prompts) filled with
                ImageNet class names: short, often odd ("a plushie red panda.")
    en_cupl     CuPL's GPT-3 descriptions of the same classes (Pratt et al., 2023): sentences
                (clip-benchmark's file also holds the templates, filled: those are left out)
    en_name     a bare class name of two or more words ("ankle boot"): the shortest alt texts

Other languages (``xx_prompt``): the same templates as NLLB translated them into 89 languages
(``nllb_dist13b_prompts.json``), filled with Babel-ImageNet's class names in that language
(``babel_imagenet.json``). Bare foreign class names are left out: BabelNet often names an
ImageNet class with its English or Latin name, so their language is not known.

The truth is as good as its sources: NLLB's translations are machine output, and a class
name inside a foreign template may be an English loanword (the caption still counts as the
template's language, as a web page in that language would).

Classes are split by index parity: ``calibrate`` holds the even classes, ``report`` the odd
ones, so the class names and CuPL sentences a report is made of never chose a threshold.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

SPLITS = ("calibrate", "report")
ENGLISH_KINDS = ("en_prompt", "en_cupl", "en_name")


@dataclass(frozen=True)
class Case:
    text: str
    language: str  # ISO 639-1, lower case
    kind: str  # one of ENGLISH_KINDS, or "xx_prompt"


@cache
def _load(name: str) -> Any:
    return json.loads((files("clip_benchmark") / "datasets" / name).read_text("utf-8"))


def _in_split(class_index: int, split: str) -> bool:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: one of {SPLITS}")
    return class_index % 2 == SPLITS.index(split)


def _fill(template: str, name: str) -> str:
    # NLLB's templates keep "{}" with stray spaces around it ("ein Foto von einem  {} ."):
    # collapse them as a web page's text would read.
    return " ".join(template.replace("{c}", name).replace("{}", name).split())


def english_cases(split: str, per_kind: int, rng: random.Random) -> list[Case]:
    templates = _load("en_zeroshot_classification_templates.json")["imagenet1k"]
    names = [
        (i, n) for i, n in enumerate(_load("en_classnames.json")["imagenet1k"])
        if _in_split(i, split)
    ]  # fmt: skip
    # clip-benchmark's CuPL file appends the 80 templates, filled, to each class's GPT-3
    # sentences (CuPL's "+ ensemble"): those are prompts, not descriptions.
    cupl = [
        sentence
        for i, (name, sentences) in enumerate(_load("cupl_prompts.json")["imagenet1k"].items())
        if _in_split(i, split)
        for sentence in sentences
        if sentence not in {t.replace("{c}", name) for t in templates}
    ]
    multiword = [n for _, n in names if len(n.split()) >= 2]
    return (
        [Case(_fill(rng.choice(templates), rng.choice(names)[1]), "en", "en_prompt")
         for _ in range(per_kind)]
        + [Case(" ".join(rng.choice(cupl).split()), "en", "en_cupl") for _ in range(per_kind)]
        + [Case(n, "en", "en_name") for n in rng.sample(multiword, min(per_kind, len(multiword)))]
    )  # fmt: skip


def foreign_cases(split: str, per_language: int, rng: random.Random) -> list[Case]:
    templates = _load("nllb_dist13b_prompts.json")
    babel = _load("babel_imagenet.json")
    cases = []
    for code in sorted(templates):
        if code == "EN" or code not in babel:
            continue
        class_indices, names = babel[code]
        pool = [n for i, n in zip(class_indices, names, strict=True) if _in_split(i, split)]
        cases += [
            Case(_fill(rng.choice(templates[code]), rng.choice(pool)), code.lower(), "xx_prompt")
            for _ in range(per_language)
        ]
    return cases


def language_cases(
    split: str, per_language: int, per_english_kind: int, seed: int = 0
) -> list[Case]:
    """English cases (``per_english_kind`` of each kind) and ``per_language`` cases in each of
    the 89 other languages, from the classes of ``split``; the same for the same arguments."""
    rng = random.Random(f"{seed}:{split}")
    return english_cases(split, per_english_kind, rng) + foreign_cases(split, per_language, rng)
