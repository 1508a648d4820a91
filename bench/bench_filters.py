"""Benchmark: the curate quality rules as DuckDB SQL (sql/rules.sql, what the stage runs) vs
an equivalent pandas implementation, on synthetic per-sample metadata.

    .venv/bin/python bench/bench_filters.py            # 5M rows
    .venv/bin/python bench/bench_filters.py --quick    # 200k rows

Both produce the same drop_<rule> columns as an in-memory table (DuckDB: Arrow; pandas: a
DataFrame); the benchmark checks that every rule flags the same rows, then prints the best
and the median of --repeats runs per side (the sides take turns), the ratios, and writes
bench/results/filters.json. It also times the flags stored as a DuckDB table and the stage's
whole `rules` table, for reference, and the flags over the same rows read out of key order.

The rows are in key order, as the curate stage's table is (img2dataset numbers keys by shard
and position; each feature part is sorted by key), so the duplicate-key check takes its
one-pass path; read out of order, it falls back to hashing, and the last line shows what that
costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.core.config import CurateConfig
from tasks.core.sql import bind
from tasks.curate.rules import apply_rules, rule_parameters

RESULTS = Path(__file__).resolve().parent / "results" / "filters.json"
RULE_COLUMNS = (
    "drop_duplicate_key", "drop_download_failed", "drop_caption_missing", "drop_caption_too_short",
    "drop_caption_too_long", "drop_caption_boilerplate", "drop_image_too_small",
    "drop_aspect_ratio", "drop_language", "drop_url_blocked",
)  # fmt: skip


def synthetic_features(n: int, seed: int = 0) -> pa.Table:
    """n rows shaped like the per-shard feature table, with every rule firing sometimes."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"word{i}" for i in range(2000)] + ["photo", "of", "a", "the", "red"])
    lengths = rng.integers(0, 16, size=n)
    words = rng.choice(vocab, size=(n, 16))
    captions = np.array([" ".join(row[:k]) for row, k in zip(words, lengths, strict=True)], object)
    special = rng.random(n)
    captions[special < 0.02] = "Untitled"
    captions[(special >= 0.02) & (special < 0.03)] = "IMG_1234.jpg"
    captions[(special >= 0.03) & (special < 0.035)] = "x" * 1200
    captions[(special >= 0.035) & (special < 0.04)] = None
    # The length as found: the crawl cut 0.5% of the captions from 2,000-5,000 characters.
    original = pd.Series(captions, dtype=object).str.len().astype("Int64")
    cut = (special >= 0.04) & (special < 0.045)
    original[cut] = rng.integers(2000, 5000, size=int(cut.sum()))
    hosts = np.array([f"cdn{i}.site{i % 97}.com" for i in range(500)] + ["ads.spam.example"])
    host = rng.choice(hosts, size=n)
    url = np.char.add(np.char.add("https://", host.astype(str)), "/img.jpg")
    width = rng.integers(4, 2000, size=n)
    height = rng.integers(4, 2000, size=n)
    status = np.where(rng.random(n) < 0.9, "success", "failed_to_download")
    language = rng.choice(np.array(["en", "en", "en", "de", "fr"]), size=n)
    norm = pd.Series(captions, dtype=object).str.lower().str.strip()
    caption_words = norm.str.split().str.len().fillna(0).astype(np.int64)
    return pa.table(
        {
            "rid": pa.array(np.arange(n, dtype=np.int64)),
            "key": pa.array(np.char.zfill((np.arange(n) - (np.arange(n) % 1000 == 999)).astype(str), 9)),
            "url": pa.array(url),
            "page_url": pa.array(url),
            "url_host": pa.array(host),
            "page_host": pa.array(host),
            "status": pa.array(status),
            "caption": pa.array(captions, pa.string()),
            "caption_norm": pa.array(norm, pa.string()),
            "caption_words": pa.array(caption_words),
            "caption_invalid_utf8": pa.array(np.zeros(n, bool)),
            "caption_original_chars": pa.array(original, pa.int64()),
            "original_width": pa.array(width),
            "original_height": pa.array(height),
            "image_width": pa.array(np.minimum(width, 256)),
            "image_height": pa.array(np.minimum(height, 256)),
            "language": pa.array(language),
            "language_confidence": pa.array(rng.random(n)),
            # The identifiers' probability of English: high for "en" rows, low for the others.
            "language_allowed_probability": pa.array(np.where(
                language == "en", rng.uniform(0.3, 1.0, n), rng.uniform(0.0, 0.1, n))),
            "image_state": pa.array(np.where(status == "success", "ok", "not_downloaded")),
            "download_shard": pa.array(np.char.add(np.char.zfill((np.arange(n) // 10000).astype(str), 5), ".tar")),
            "row_in_shard": pa.array(np.arange(n) % 10000),
            "clip_score": pa.nulls(n, pa.float64()),
        }
    )  # fmt: skip


class DuckDBSide:
    """The DuckDB side, three ways: the rule flags as an in-memory Arrow table (what the pandas
    peer produces: an in-memory frame of flags), the same flags stored as a DuckDB table (adds
    DuckDB's column compression), and the stage's full `rules` table (carries every input
    column along)."""

    def __init__(self, features: pa.Table, cfg: CurateConfig) -> None:
        self.cfg = cfg
        self.con = duckdb.connect()
        self.con.register("features_arrow", features)
        self.con.execute("CREATE TABLE features AS SELECT * FROM features_arrow")
        text, self.params = bind("curate/rules", rule_parameters(cfg))
        self.flags_query = f"SELECT rid, {', '.join(RULE_COLUMNS)} FROM ({text})"

    def runs(self) -> dict[str, Callable[[], object]]:
        return {
            "flags_arrow": lambda: self.con.sql(self.flags_query, params=self.params).to_arrow_table(),
            "flags_table": lambda: self.con.execute(f"CREATE OR REPLACE TABLE flags AS {self.flags_query}", self.params),
            "rules_table": lambda: apply_rules(self.con, self.cfg),
        }  # fmt: skip

    def counts(self) -> dict[str, int]:
        """Rows each rule flags, from the last `flags` table."""
        sums = ", ".join(f"sum({c}::INT)" for c in RULE_COLUMNS)
        row = self.con.execute(f"SELECT {sums} FROM flags").fetchall()[0]
        return dict(zip(RULE_COLUMNS, map(int, row), strict=True))


def interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each run, ``repeats`` rounds of one run each in turn: the machine's speed
    drifts (this one shares its cores), and alternating the sides gives both the same drift."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def rules_pandas(frame: pd.DataFrame, cfg: CurateConfig) -> pd.DataFrame:
    """The same rules written the idiomatic pandas way (vectorised string methods)."""
    p = rule_parameters(cfg)
    out = pd.DataFrame(index=frame.index)
    caption = frame["caption"]
    stripped = caption.str.strip()
    chars = caption.str.len()
    words = frame["caption_words"]
    present = caption.notna() & (stripped != "")
    out["drop_duplicate_key"] = frame["key"].duplicated(keep="first")  # frame is in rid order
    out["drop_download_failed"] = frame["status"] != "success"
    out["drop_caption_missing"] = ~present
    out["drop_caption_too_short"] = present & (
        (chars < p["min_caption_chars"]) | (words < p["min_caption_words"])
    )
    found = np.fmax(chars, frame["caption_original_chars"])  # NaN only where both are
    out["drop_caption_too_long"] = (found > p["max_caption_chars"]).fillna(False)
    pattern = re.compile(f"(?:{p['boilerplate_filename_pattern']})")
    norm = frame["caption_norm"]
    short = words <= p["boilerplate_filename_max_words"]
    filename = pd.Series(False, index=frame.index)
    filename[short] = norm[short].str.fullmatch(pattern).astype("boolean").fillna(False)
    out["drop_caption_boilerplate"] = norm.isin(p["boilerplate_captions"]) | filename
    side = frame[["original_width", "original_height"]]
    out["drop_image_too_small"] = side.min(axis=1) < p["min_image_side"]
    out["drop_aspect_ratio"] = side.max(axis=1) > p["max_aspect_ratio"] * side.min(axis=1)
    below = np.where(words < p["language_short_words"],
                     p["min_allowed_language_probability_short"],
                     p["min_allowed_language_probability"])  # fmt: skip
    out["drop_language"] = (
        (len(p["allowed_languages"]) > 0)
        & (chars >= p["language_min_chars"]).fillna(False)
        & (frame["language_allowed_probability"] < below)
    )
    blocked = pd.Series(False, index=frame.index)
    for domain in p["url_blocklist"]:
        for host in (frame["url_host"], frame["page_host"]):
            blocked |= (host == domain) | host.str.endswith("." + domain).fillna(False)
    out["drop_url_blocked"] = blocked
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200k rows instead of 5M")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, interleaved")
    args = parser.parse_args()
    n = args.rows or (200_000 if args.quick else 5_000_000)
    cfg = CurateConfig(url_blocklist=["spam.example"], language_min_chars=0)
    features = synthetic_features(n)
    frame = features.to_pandas()
    duck = DuckDBSide(features, cfg)
    unordered = DuckDBSide(features.take(np.random.default_rng(1).permutation(n)), cfg)
    runs = duck.runs() | {"flags_arrow_unordered": unordered.runs()["flags_arrow"]}
    seconds = interleaved(runs | {"pandas": lambda: rules_pandas(frame, cfg)}, args.repeats)
    duck_counts = duck.counts()
    unordered.runs()["flags_table"]()
    if unordered.counts() != duck_counts:
        raise SystemExit(f"read out of key order, the flags differ: {unordered.counts()}")
    flags = rules_pandas(frame, cfg)
    pandas_counts = {c: int(flags[c].sum()) for c in RULE_COLUMNS}
    if duck_counts != pandas_counts:
        raise SystemExit(f"implementations disagree:\nduckdb {duck_counts}\npandas {pandas_counts}")
    best = {name: min(times) for name, times in seconds.items()}
    median = {name: statistics.median(times) for name, times in seconds.items()}
    ratio = best["pandas"] / best["flags_arrow"]
    print(f"quality rules on {n:,} rows (identical flags: {sum(duck_counts.values()):,} in all),"
          f" {args.repeats} interleaved runs each")  # fmt: skip
    print(f"{'implementation':<40}{'best s':>9}{'median s':>10}{'rows/s':>13}{'vs pandas':>11}")
    for name, label in (
        ("flags_arrow", "duckdb sql: rule flags (in memory)"),
        ("flags_table", "duckdb sql: rule flags (duckdb table)"),
        ("rules_table", "duckdb sql: stage `rules` table"),
        ("pandas", "pandas: rule flags (in memory)"),
        ("flags_arrow_unordered", "duckdb sql: rule flags, keys unordered"),
    ):
        secs = best[name]
        print(f"{label:<40}{secs:>9.2f}{median[name]:>10.2f}{n / secs:>13,.0f}"
              f"{best['pandas'] / secs:>10.1f}x")  # fmt: skip
    median_ratio = median["pandas"] / median["flags_arrow"]
    print(f"ratio pandas/duckdb (flags in memory): {ratio:.1f}x best, {median_ratio:.1f}x median"
          " (target >= 10x)")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "rows": n, "repeats": args.repeats, "duckdb_seconds": best["flags_arrow"],
        "duckdb_flags_table_seconds": best["flags_table"],
        "duckdb_full_table_seconds": best["rules_table"], "pandas_seconds": best["pandas"],
        "duckdb_unordered_keys_seconds": best["flags_arrow_unordered"],
        "ratio": ratio, "median_ratio": median_ratio, "all_seconds": seconds,
        "rule_counts": duck_counts, "cpus": os.cpu_count(), "machine": platform.machine(),
        "duckdb": duckdb.__version__, "pandas": pd.__version__,
    }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
