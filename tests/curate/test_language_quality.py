"""The language rule against known languages (``demo/language_quality.py``), through the
feature code and the SQL rule curate runs, with the default config (``allowed_languages:
[en]``). ``bench/bench_language_quality.py`` is the full harness."""

from __future__ import annotations

import random

import duckdb
import pyarrow as pa
import pytest

from demo.captions import FASHION_FORMS, fashion_caption
from demo.language_quality import language_cases
from tasks.core.config import CurateConfig
from tasks.curate.features import FEATURE_SCHEMA, language_columns
from tasks.curate.rules import apply_rules

RECALL_MIN = 0.85  # share of captions in other languages dropped
ENGLISH_DROPPED_MAX = 0.005  # share of English captions dropped


def dropped_by_language(captions: list[str], cfg: CurateConfig) -> list[bool]:
    """Each caption's ``drop_language``, from the feature pass's columns and rules.sql."""
    columns = language_columns(captions, cfg.allowed_languages)
    rows = [
        {"caption": c, "caption_norm": c, "caption_words": len(c.split()),
         **{name: values[i] for name, values in columns.items()}}
        for i, c in enumerate(captions)
    ]  # fmt: skip
    table = pa.Table.from_pylist(
        [{name: row.get(name) for name in FEATURE_SCHEMA.names} for row in rows],
        schema=FEATURE_SCHEMA,
    ).add_column(0, "rid", pa.array(range(len(rows)), pa.int64()))
    with duckdb.connect() as con:
        con.register("features", table)
        apply_rules(con, cfg)
        return [flag for (flag,) in con.execute("SELECT drop_language FROM rules ORDER BY rid")
                .fetchall()]  # fmt: skip


def test_language_rule_meets_its_targets_on_held_out_captions():
    """Until 2026-12-03 the rule (langid's top language, probability >= 0.9, >= 25 chars)
    dropped 44 % of these foreign captions; CJK prompts are mostly under 25 characters."""
    cases = language_cases("report", per_language=12, per_english_kind=200, seed=1)
    dropped = dropped_by_language([c.text for c in cases], CurateConfig())
    foreign = [c.language != "en" for c in cases]
    caught = sum(d and f for d, f in zip(dropped, foreign, strict=True))
    english_dropped = [c.text for c, d, f in zip(cases, dropped, foreign, strict=True)
                       if d and not f]  # fmt: skip
    recall = caught / sum(foreign)
    assert recall >= RECALL_MIN, f"recall {recall:.3f}"
    assert len(english_dropped) <= ENGLISH_DROPPED_MAX * (len(cases) - sum(foreign)), (
        english_dropped
    )


def test_the_demo_webs_english_alt_texts_are_kept_and_its_foreign_ones_dropped():
    """langid alone read 58 of the demo's Fashion captions as Danish, Dutch, German or
    Tagalog with confidence 0.90-1.00 ("pullover for sale, classic, good condition": da)."""
    rng = random.Random(0)
    english = sorted({fashion_caption(c, rng) for c in FASHION_FORMS for _ in range(300)})
    foreign = ["une robe rouge pour l'été", "冬用の黒いコート", "ein warmer Wintermantel mit Taschen",
               "vestido rojo de verano", "Красное платье на лето"]  # fmt: skip
    dropped = dropped_by_language(english + foreign, CurateConfig())
    assert [c for c, d in zip(english, dropped, strict=False) if d] == []
    assert dropped[len(english) :] == [True] * len(foreign)


def test_other_allowed_languages_and_the_rule_switched_off():
    captions = ["ein warmer Wintermantel mit vielen Taschen", "a warm winter coat with pockets",
                "un manteau chaud avec des poches"]  # fmt: skip
    assert dropped_by_language(captions, CurateConfig(allowed_languages=["en", "de"])) == [
        False, False, True,
    ]  # fmt: skip
    assert dropped_by_language(captions, CurateConfig(allowed_languages=[])) == [False] * 3
    short = CurateConfig(language_min_chars=35)
    assert dropped_by_language(captions, short) == [True, False, False]


def test_the_renamed_threshold_is_refused_with_its_replacement_named():
    with pytest.raises(ValueError, match="min_allowed_language_probability"):
        CurateConfig(min_language_confidence=0.9)
