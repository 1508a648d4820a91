"""Ground truth for curate's quality rules: precision and recall on the demo web's planted
captions, from a finished demo run (``make demo``; no pipeline work is redone here).

    .venv/bin/python bench/bench_rules_quality.py [--root data/demo] [--web .cache/demo-web]

Truth comes from the demo web's ``planted.json``:

- **must drop**: the planted bad alt texts (empty, missing, boilerplate, a file name, a huge
  one, French, Japanese) and the two invalid-UTF-8 ones, each with the rule that should
  name it;
- **must keep**: the two planted alt texts that only look odd (HTML entities, stray
  whitespace), every Fashion-MNIST pair, whose captions the demo writes in English, and
  every emoji pair (English phrasings around the emoji's English Unicode name: "croissant
  emoji", "st. barthélemy flag emoji");
- **not scored**: clipart titles (real openclipart file names: some are Italian or German,
  so their truth is not known), and everything else.

A row counts as dropped by the quality rules when any of ``QUALITY_RULES`` is among its
reasons (dedup and download reasons are other harnesses' business). Prints precision and
recall over the scored rows, each rule's share, and the scored rows each rule drops wrongly
(the ones worth a look); writes bench/results/rules_quality.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd

QUALITY_RULES = (
    "caption_missing", "caption_invalid_utf8", "caption_boilerplate", "caption_too_short",
    "caption_too_long", "image_too_small", "aspect_ratio", "language", "url_blocked",
    "clip_score",
)  # fmt: skip
EXPECTED_RULE = {
    "empty_alt": "caption_missing", "missing_alt": "caption_missing",
    "boilerplate": "caption_boilerplate", "file_name": "caption_boilerplate",
    "very_long": "caption_too_long", "non_english": "language",
}  # fmt: skip
KEEP_KINDS = ("entities", "whitespace")
RESULTS = Path(__file__).resolve().parent / "results" / "rules_quality.json"


def truth(planted: dict) -> dict[str, str | None]:
    """Path on the demo origin -> the rule that must drop it, or None where it must stay."""
    out: dict[str, str | None] = {}
    for pair in planted["pairs"]:
        if pair["url"].startswith(("/img/fashion/", "/img/emoji/")):
            out[pair["url"]] = None
    for case in planted["bad_captions"]:
        out[case["url"]] = None if case["kind"] in KEEP_KINDS else EXPECTED_RULE[case["kind"]]
    for case in planted["invalid_utf8"]:
        out[case["url"]] = "caption_invalid_utf8"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/demo", help="the demo run's storage root")
    parser.add_argument("--web", default=".cache/demo-web", help="the demo web (planted.json)")
    args = parser.parse_args()
    planted_path = Path(args.web) / "planted.json"
    samples_path = Path(args.root) / "curate" / "samples.parquet"
    for needed in (planted_path, samples_path):
        if not needed.exists():
            raise SystemExit(f"{needed} not found: run `make demo` first (see the docstring)")
    expected = truth(json.loads(planted_path.read_text()))
    samples = pd.read_parquet(samples_path)
    samples["path"] = samples["url"].map(lambda u: urlsplit(u).path)
    samples["quality"] = samples["reasons"].map(lambda r: [x for x in r if x in QUALITY_RULES])
    scored = samples[samples["path"].isin(expected.keys())].copy()
    scored["must_drop"] = scored["path"].map(lambda p: expected[p] is not None)
    scored["dropped"] = scored["quality"].map(len) > 0
    tp = int((scored["must_drop"] & scored["dropped"]).sum())
    fp = int((~scored["must_drop"] & scored["dropped"]).sum())
    fn = int((scored["must_drop"] & ~scored["dropped"]).sum())
    bad_paths = {p for p, rule in expected.items() if rule is not None}
    unreached = sorted(bad_paths - set(samples["path"]))
    result = {
        "scored_rows": len(scored), "must_drop": int(scored["must_drop"].sum()),
        "true_positives": tp, "false_positives": fp, "false_negatives": fn,
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "planted_bad_not_in_the_download": unreached,
    }  # fmt: skip
    print(f"quality rules vs planted truth: {len(scored):,} scored rows "
          f"({result['must_drop']} must drop), precision {result['precision']:.3f} "
          f"({tp}/{tp + fp}), recall {result['recall']:.3f} ({tp}/{tp + fn})")  # fmt: skip
    if unreached:
        print(f"planted bad alt texts that never became a download row (crawl): {unreached}")
    print(f"{'rule':<22}{'drops':>7}{'right':>7}{'wrong':>7}  (scored rows; right = must drop)")
    per_rule = {}
    for rule in QUALITY_RULES:
        hit = scored[scored["quality"].map(lambda q, r=rule: r in q)]
        right = int(hit["must_drop"].sum())
        per_rule[rule] = {"drops": len(hit), "right": right, "wrong": len(hit) - right}
        if len(hit):
            print(f"{rule:<22}{len(hit):>7}{right:>7}{len(hit) - right:>7}")
    result["per_rule"] = per_rule
    for _, row in scored[scored["must_drop"] != scored["dropped"]].iterrows():
        want = expected[row["path"]] or "keep"
        print(
            f"  wrong: {row['path']}  want {want}, got {row['quality'] or 'keep'}  "
            f"{row['caption'][:80]!r} (language {row['language']}, "
            f"{row['language_confidence'] or 0:.2f})"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
