"""The demo web: a static site of real offline images with alt text, planted cases and
hostile endpoints, which ``make demo`` and the tests crawl.

``build_demo_web(out_dir, "test")`` writes the site and ``planted.json`` (ground truth: every
expected (url, caption, page) pair and every planted case, as paths on the server's origin);
``serve(out_dir)`` (from demo.server, re-exported here) serves it on 127.0.0.1.

    python -m demo.web build OUT [--size demo]
    python -m demo.web serve OUT [--port N]
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from demo import offline_data
from demo import planted as demo_planted
from demo.captions import clipart_caption, emoji_caption, fashion_caption
from demo.planted import Spare
from demo.server import DemoWebServer, serve
from demo.site import ORIGIN, Item, Site, png_bytes

log = logging.getLogger(__name__)

__all__ = [
    "BUILD_VERSION",
    "PRESETS",
    "DemoSizes",
    "DemoWebServer",
    "build_demo_web",
    "main",
    "serve",
]


@dataclass(frozen=True)
class DemoSizes:
    """How much of each image source the site shows; the presets are in PRESETS."""

    fashion_per_class: int
    emoji: int
    clipart: int
    per_page: int = 24
    test_copy_fraction: float = 0.01
    """Share of fashion images that are copies of Fashion-MNIST *test* images."""
    seed: int = 0


BUILD_VERSION = 2
"""Recorded in planted.json; a build of another version is rebuilt. 2: planted copies of
transparent emoji are made from the picture as shown (composited onto white)."""

PRESETS: dict[str, DemoSizes] = {
    "test": DemoSizes(fashion_per_class=20, emoji=50, clipart=30),
    "demo": DemoSizes(fashion_per_class=1000, emoji=1000, clipart=500),
}


def _fashion_items(site: Site, sizes: DemoSizes) -> tuple[list[Item], list[dict[str, Any]], Spare]:
    """Fashion-MNIST train images (and ~1% test-set copies) as 28x28 PNGs plus 2x variants;
    also an endless supply of unused train images for the planted cases."""
    train_x, train_y = offline_data.fashion_mnist("train")
    test_x, test_y = offline_data.fashion_mnist("test")
    rng = np.random.default_rng(sizes.seed)
    chosen: list[tuple[str, int, int]] = []
    for label in range(len(offline_data.FASHION_MNIST_CLASSES)):
        idx = rng.permutation(np.flatnonzero(train_y == label))[: sizes.fashion_per_class]
        chosen += [("train", int(i), label) for i in idx]
    used = {index for _, index, _ in chosen}
    spare_idx = (int(i) for i in rng.permutation(len(train_y)) if int(i) not in used)
    spare = (
        (Image.fromarray(train_x[i]), offline_data.FASHION_MNIST_CLASSES[train_y[i]])
        for i in spare_idx
    )
    n_test = max(1, round(len(chosen) * sizes.test_copy_fraction))
    chosen += [("test", int(i), int(test_y[i])) for i in rng.permutation(len(test_y))[:n_test]]
    site.rng.shuffle(chosen)
    items, records = [], []
    for k, (split, index, label) in enumerate(chosen):
        pixels = (train_x if split == "train" else test_x)[index]
        image = Image.fromarray(pixels)
        path = site.write(f"/img/fashion/{k:05d}.png", png_bytes(image))
        hidpi = None
        if k % 4 == 0:
            hidpi = site.write(
                f"/img/fashion/{k:05d}@2x.png",
                png_bytes(image.resize((56, 56), Image.Resampling.NEAREST)),
            )
        class_name = offline_data.FASHION_MNIST_CLASSES[label]
        caption = fashion_caption(class_name, site.rng)
        items.append(Item(path, caption, "fashion-mnist", class_name, hidpi))
        records.append({"url": path, "label": class_name, "split": split, "index": index})
    return items, records, spare


def _emoji_items(site: Site, sizes: DemoSizes) -> list[Item]:
    pool = offline_data.emoji()
    picked = site.rng.sample(pool, min(sizes.emoji, len(pool)))
    items = []
    for k, e in enumerate(picked):
        path = site.write(f"/img/emoji/{k:04d}.png", e.path.read_bytes())
        items.append(Item(path, emoji_caption(e.name, site.rng), "emoji", e.name))
    return items


def _clipart_items(site: Site, sizes: DemoSizes) -> list[Item]:
    pool = offline_data.clipart()
    picked = site.rng.sample(pool, min(sizes.clipart, len(pool)))
    items = []
    for k, (src, raw_name) in enumerate(picked):
        # File names carry author tags and counters ("flask_matthew__02"); digits are noise.
        name = re.sub(r"\s+", " ", re.sub(r"\d+", " ", raw_name)).strip() or "drawing"
        path = site.write(f"/img/clipart/{k:04d}.png", src.read_bytes())
        caption = clipart_caption(name, src.parent.name, site.rng)
        items.append(Item(path, caption, "clipart", name))
    return items


def _section(site: Site, name: str, items: list[Item], per_page: int) -> str:
    """Pages of ``per_page`` images under ``/{name}/``, chained prev/next, plus an index."""
    chunks = [items[i : i + per_page] for i in range(0, len(items), per_page)] or [[]]
    names = [f"page-{n + 1:03d}.html" for n in range(len(chunks))]
    for n, chunk in enumerate(chunks):
        page = f"/{name}/{names[n]}"
        links = ["/", "./"] + [names[m] for m in (n - 1, n + 1) if 0 <= m < len(chunks)]
        links.append(f"{ORIGIN}/{name}/")
        body = "\n".join(site.img_html(item, page) for item in chunk)
        site.page(page, f"{name} - page {n + 1}", body, links)
    site.page(f"/{name}/", f"{name}", "<p>All pages.</p>", ["../", *names])
    return f"/{name}/"


def build_demo_web(out_dir: str | Path, sizes: str | DemoSizes = "test") -> dict[str, Any]:
    """Write the demo site and its ``planted.json`` into ``out_dir``; return a summary.

    ``sizes`` is a preset name ("test": seconds, ~300 images; "demo": ~11,600 images) or a
    DemoSizes. All URLs in planted.json are paths on the serving origin.
    """
    started = time.monotonic()
    preset = PRESETS[sizes] if isinstance(sizes, str) else sizes
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    site = Site(out, preset.seed)
    fashion, fashion_records, spare = _fashion_items(site, preset)
    emoji_items = _emoji_items(site, preset)
    clipart_items = _clipart_items(site, preset)
    sections = [
        _section(site, "fashion", fashion, preset.per_page),
        _section(site, "emoji", emoji_items, preset.per_page),
        _section(site, "clipart", clipart_items, preset.per_page),
    ]
    planted = demo_planted.plant_all(site, fashion, emoji_items, spare)
    featured = next(item for item in fashion[2:] if item.hidpi_path is None)
    index_body = (
        f'<p>Featured: <img src="{featured.path}" alt="{html.escape(featured.caption)}"></p>'
    )
    site.expect(featured.path, featured.caption, "/")
    planted["repeated_pairs"].append({"url": featured.path, "caption": featured.caption})
    site.page("/", "clipflow demo web", index_body, [*sections, *planted.pop("index_links")])
    site.write("/robots.txt", b"User-agent: *\nDisallow: /private/\n")
    planted.update(
        pairs=site.pairs,
        fashion=fashion_records,
        test_set_copies=[r for r in fashion_records if r["split"] == "test"],
        pages=sorted(site.pages),
        sizes=asdict(preset),
        version=BUILD_VERSION,
        note="All URLs are paths on the serving origin (prefix them with the server's .url).",
    )
    (out / "planted.json").write_text(json.dumps(planted, indent=1, ensure_ascii=False))
    summary = {
        "site_dir": str(out),
        "pages": len(site.pages),
        "pairs": len(site.pairs),
        "images": len(fashion) + len(emoji_items) + len(clipart_items),
        "planted": str(out / "planted.json"),
        "seconds": round(time.monotonic() - started, 2),
    }
    log.info("demo web built: %s", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m demo.web build OUT [--size demo]`` / ``serve OUT [--port N]``."""
    parser = argparse.ArgumentParser(prog="python -m demo.web", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write the demo site into OUT")
    build.add_argument("out")
    build.add_argument("--size", choices=sorted(PRESETS), default="demo")
    serve_p = sub.add_parser("serve", help="serve a built site on 127.0.0.1 until Ctrl-C")
    serve_p.add_argument("out")
    serve_p.add_argument("--host", default="127.0.0.1")
    serve_p.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "build":
        summary = build_demo_web(args.out, args.size)
        log.info("wrote %d pages, %d pairs to %s", summary["pages"], summary["pairs"], args.out)
        return 0
    if not (Path(args.out) / "planted.json").exists():
        parser.error(f"{args.out}: not a built demo web (no planted.json); run build first")
    with serve(args.out, host=args.host, port=args.port) as server:
        log.info("serving %s at %s (Ctrl-C stops)", args.out, server.url)
        with contextlib.suppress(KeyboardInterrupt):
            server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
