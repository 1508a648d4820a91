"""Run the quality rules in ``sql/`` with thresholds from CurateConfig, and combine every
rule's column (quality, decontamination, dedup) into ``keep`` and ``reasons``.

A dropped row is counted under its first reason in ``RULES`` order (so the counts sum to
``input - kept``); ``reasons`` lists every rule that drops it.
"""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa

from tasks.core.config import CurateConfig
from tasks.core.sql import bind
from tasks.curate.captions import normalise_caption

RULES: tuple[str, ...] = (
    "duplicate_key",
    "download_failed",
    "image_missing",
    "shard_truncated",
    "image_empty",
    "image_undecodable",
    "caption_missing",
    "caption_invalid_utf8",
    "caption_boilerplate",
    "caption_too_short",
    "caption_too_long",
    "image_too_small",
    "aspect_ratio",
    "language",
    "url_blocked",
    "clip_score",
    "eval_contamination",
    "duplicate_sha256",
    "duplicate_url",
    "duplicate_caption_image",
    "near_duplicate",
    "semantic_duplicate",
)
"""Every rule, in the order that decides which reason a dropped row is counted under."""


def rule_parameters(cfg: CurateConfig) -> dict[str, Any]:
    """The named parameters of the SQL rules, from config (the only place thresholds live)."""
    # Compared with caption_norm, so spelled as it is: "Click here!" matches "CLICK HERE!!".
    boilerplate = sorted({normalise_caption(c) or "" for c in cfg.boilerplate_captions})
    return {
        "min_caption_chars": cfg.min_caption_chars,
        "min_caption_words": cfg.min_caption_words,
        "max_caption_chars": cfg.max_caption_chars,
        "boilerplate_captions": boilerplate,
        # Derived, not a threshold: a caption of more words cannot equal a listed one.
        "boilerplate_caption_max_words": max((len(c.split()) for c in boilerplate), default=0),
        "boilerplate_filename_pattern": cfg.boilerplate_filename_pattern,
        "boilerplate_filename_max_words": cfg.boilerplate_filename_max_words,
        "min_image_side": cfg.min_image_side,
        "max_aspect_ratio": cfg.max_aspect_ratio,
        "allowed_languages": list(cfg.allowed_languages),
        "min_allowed_language_probability": cfg.min_allowed_language_probability,
        "min_allowed_language_probability_short": cfg.min_allowed_language_probability_short,
        "language_short_words": cfg.language_short_words,
        "language_min_chars": cfg.language_min_chars,
        "url_blocklist": list(cfg.url_blocklist),  # canonical: CurateConfig validates it
        "clip_score_min": cfg.clip_score_min,
        "clip_score_top_fraction": cfg.clip_score_top_fraction,
    }


def apply_rules(con: duckdb.DuckDBPyConnection, cfg: CurateConfig) -> None:
    """Create table ``rules`` from table ``features``: every column plus ``rid`` (a row id
    unique even when keys repeat) and one ``drop_<rule>`` boolean per quality rule."""
    text, params = bind("curate/rules", rule_parameters(cfg))
    con.execute(f"CREATE OR REPLACE TABLE rules AS {text}", params)


def combine(con: duckdb.DuckDBPyConnection, decisions: pa.Table) -> None:
    """Create table ``curated`` from ``rules`` joined with ``decisions`` (rid plus the
    decontamination and dedup columns): adds ``reasons`` and ``keep``."""
    con.register("decisions", decisions)
    text, params = bind("curate/combine", {})
    con.execute(f"CREATE OR REPLACE TABLE curated AS {text}", params)
    con.unregister("decisions")


def funnel_counts(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, int]]:
    """{rule: {"first": rows counted under it, "any": rows it flags}} for every rule."""
    text, params = bind("curate/funnel", {})
    found = {r: (f, a) for r, f, a in con.execute(text, params).fetchall()}
    return {
        rule: {"first": int(found.get(rule, (0, 0))[0]), "any": int(found.get(rule, (0, 0))[1])}
        for rule in RULES
    }
