"""Text -> image search precision of ``clipflow inspect`` on a finished demo run: for each
Fashion-MNIST class name, the fraction of the top 10 training images (the search index the
evaluate stage builds) whose true label, from the demo web's planted.json, is that class.

    .venv/bin/python bench/search_precision.py [configs/demo.yaml] [--planted PATH]

Needs ``make demo`` to have run (``data/demo/eval/search/``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("CLIPFLOW_ALLOW_PRIVATE_NETWORKS", "1")  # demo.yaml names loopback seeds

from demo.benchmark_sets import FASHION_MNIST_CLASSNAMES  # noqa: E402
from demo.offline_data import FASHION_MNIST_CLASSES  # noqa: E402
from tasks.core.config import load_config  # noqa: E402
from tasks.core.storage import Storage  # noqa: E402
from tasks.inspect.catalog import Catalog  # noqa: E402
from tasks.inspect.search import ImageSearch  # noqa: E402

TOP = 10


def true_labels(planted: Path) -> dict[str, str]:
    """Demo-web image path (``/img/fashion/00012.png``; the 2x copies too) -> its class."""
    labels = {}
    for item in json.loads(planted.read_text(encoding="utf-8"))["fashion"]:
        labels[item["url"]] = item["label"]
        labels[item["url"].replace(".png", "@2x.png")] = item["label"]
    return labels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/demo.yaml")
    parser.add_argument("--planted", default=".cache/demo-web/planted.json")
    args = parser.parse_args()
    cfg = load_config(args.config)
    storage = Storage(cfg.storage)
    catalog = Catalog(storage)
    search = ImageSearch(cfg, storage, catalog)
    if not search.available():
        print(f"no search index under {storage.root}/eval/search: run make demo first")
        return 1
    labels = true_labels(Path(args.planted))
    started = time.perf_counter()
    precisions = []
    for classname, label in zip(FASHION_MNIST_CLASSNAMES, FASHION_MNIST_CLASSES, strict=True):
        hits = search.by_text(classname, TOP)
        rows = {
            r["key"]: r for r in catalog.query("samples_by_key", {"keys": [k for k, _ in hits]})
        }
        found = [labels.get(urlsplit(rows[k]["url"]).path) for k, _ in hits]
        precision = sum(f == label for f in found) / TOP
        precisions.append(precision)
        print(f"{classname:<22} precision@{TOP} {precision:.1f}  {found}")
    elapsed = (time.perf_counter() - started) / len(precisions)
    mean = sum(precisions) / len(precisions)
    print(f"mean precision@{TOP} over {len(precisions)} class names: {mean:.2f} "
          f"({sum(p > 0.5 for p in precisions)} of {len(precisions)} above 0.5; "
          f"{1000 * elapsed:.0f} ms a query after the first)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
