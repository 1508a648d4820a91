"""Tokenizer throughput: ``model.get_tokenizer()`` vs ``open_clip.tokenize`` on 100k captions.

Three corpora, each 100k strings: OpenAI's ImageNet prompt templates x class names (real,
plain ASCII), alt-text-like captions with 10% mixed-script / HTML / emoji strings, and the
deliberately hard parity corpus (60% non-ASCII; ftfy dominates both tokenizers there). Each
run starts from a fresh tokenizer, so word caches are built inside the timed call. Outputs
are compared for equality.

    .venv/bin/python bench/bench_tokenizer.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.text_corpus import hard_strings, prompt_captions, web_captions  # noqa: E402
from model.tokenizer import ClipTokenizer  # noqa: E402


def timed(fn, texts):
    t0 = time.perf_counter()
    out = fn(texts)
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k strings per corpus")
    parser.add_argument("--out", default="bench/results/tokenizer.json")
    args = parser.parse_args()
    n = 10_000 if args.quick else 100_000
    corpora = {
        "imagenet-prompts": prompt_captions(n),
        "web-captions": web_captions(n),
        "hard-strings": hard_strings(n),
    }
    results = []
    print(f"{'corpus':<18}{'n':>8}{'clipflow/s':>12}{'open_clip/s':>13}{'ratio':>8}  identical")
    for name, texts in corpora.items():
        ours_s, ours = timed(ClipTokenizer(), texts)
        ref_s, ref = timed(open_clip.tokenize, texts)
        row = {
            "corpus": name,
            "n": n,
            "clipflow_per_s": n / ours_s,
            "open_clip_per_s": n / ref_s,
            "speedup": ref_s / ours_s,
            "identical": bool(torch.equal(ours, ref)),
        }
        results.append(row)
        print(
            f"{name:<18}{n:>8}{row['clipflow_per_s']:>12.0f}{row['open_clip_per_s']:>13.0f}"
            f"{row['speedup']:>7.1f}x  {row['identical']}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results}, indent=2))


if __name__ == "__main__":
    main()
