"""A small web of real images with planted cases, served on 127.0.0.1 and downloaded with
real img2dataset into the download stage's layout (``{root}/download/NNNNN.tar|.parquet``).

Distinct images are openclipart drawings spread across its category tree; planted cases are
exact copies (same bytes, new URL), a URL whose bytes change per request, a same-pixels copy
under the same caption, near copies (resized, JPEG re-encoded), copies of evaluation images,
and bad captions and images. ``Planted`` records which URL is which.
"""

from __future__ import annotations

import io
import itertools
import sys
import threading
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
from PIL import Image

from demo.offline_data import clipart, fashion_mnist
from model.tario import SampleWriter
from tasks.curate.phash import flatten_alpha

DISTINCT = 36
EVAL_IMAGES = 12
EVAL_PLANTED = (0, 5)
BLOCKED_DOMAIN = "spam.example"


@dataclass
class Planted:
    """URLs of the planted cases, keyed by what each should be dropped for."""

    distinct: list[str] = field(default_factory=list)
    exact_copies: dict[str, str] = field(default_factory=dict)
    """copy URL -> original URL (same bytes)."""
    near_copies: dict[str, str] = field(default_factory=dict)
    caption_image_copy: dict[str, str] = field(default_factory=dict)
    dynamic_url: str = ""
    eval_copies: list[str] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)
    """URL -> the reason it must be dropped for."""


def _png(image: Image.Image, compress_level: int = 6) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class _Handler(SimpleHTTPRequestHandler):
    counter = itertools.count()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        if self.path == "/dynamic.png":
            # A different image on every request: same URL, different bytes.
            rng = np.random.default_rng(next(self.counter))
            body = _png(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


class ImageServer:
    """A static file server on 127.0.0.1 (plus /dynamic.png), in a background thread."""

    def __init__(self, site_dir: Path) -> None:
        handler = type("H", (_Handler,), {"counter": itertools.count()})
        self.httpd = ThreadingHTTPServer(
            ("127.0.0.1", 0), lambda *a, **k: handler(*a, directory=str(site_dir), **k)
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def build_site(site_dir: Path, base_url: str) -> tuple[list[dict[str, Any]], Planted]:
    """Write the images; return the candidate rows (url, caption, page_url, source)."""
    site_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    planted = Planted()
    page = f"{base_url}/index.html"

    def add(name: str, data: bytes | None, caption: str | None, page_url: str = page) -> str:
        if data is not None:
            (site_dir / name).write_bytes(data)
        url = f"{base_url}/{name}"
        rows.append({"url": url, "caption": caption, "page_url": page_url, "source": "test"})
        return url

    images = []
    for i, (path, caption) in enumerate(clipart()[::200][:DISTINCT]):
        image = flatten_alpha(Image.open(path))
        images.append(image)
        planted.distinct.append(
            add(f"d{i:03d}.png", _png(image), f"a clipart drawing of {caption}")
        )
    for i in range(3):
        data = (site_dir / f"d{i:03d}.png").read_bytes()
        copy = add(f"exact{i}.png", data, f"the same drawing again, number {i}")
        planted.exact_copies[copy] = planted.distinct[i]
    image = images[3]
    resized = image.resize((image.width + image.width // 8, image.height + image.height // 8))
    planted.near_copies[add("near-resized.png", _png(resized), "a resized copy of a drawing")] = (
        planted.distinct[3]
    )
    planted.near_copies[add("near-jpeg.jpg", _jpeg(images[4], 70), "a recompressed drawing")] = (
        planted.distinct[4]
    )
    same_pixels = add("same-pixels.png", _png(images[5], compress_level=1), "A clipart drawing of "
                      + clipart()[::200][5][1] + "!")  # fmt: skip
    planted.caption_image_copy[same_pixels] = planted.distinct[5]
    planted.dynamic_url = add("dynamic.png", None, "a picture that changes every time")
    add("dynamic.png", None, "a picture that changes every time, again")
    eval_images, _ = fashion_mnist("test")
    for j in EVAL_PLANTED:
        big = Image.fromarray(eval_images[j]).resize((112, 112), Image.Resampling.NEAREST)
        planted.eval_copies.append(add(f"eval-copy-{j}.png", _png(big), "a photo of a garment"))
    _add_bad(add, images, planted)
    return rows, planted


def _add_bad(add: Any, images: list[Image.Image], planted: Planted) -> None:
    """Bad captions and images, each on its own fresh image so it is no duplicate."""
    rng = np.random.default_rng(7)

    def noise(w: int = 96, h: int = 96) -> bytes:
        return _png(Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)))

    bad = planted.bad
    bad[add("b-null.png", noise(), None)] = "caption_missing"
    bad[add("b-empty-caption.png", noise(), "   ")] = "caption_missing"
    bad[add("b-short.png", noise(), "ok")] = "caption_too_short"
    bad[add("b-long.png", noise(), "word " * 300)] = "caption_too_long"
    bad[add("b-boiler.png", noise(), "Untitled")] = "caption_boilerplate"
    bad[add("b-filename.png", noise(), "IMG_1234.JPG")] = "caption_boilerplate"
    bad[add("b-german.png", noise(), "Eine Zeichnung von einem roten Apfel auf dem Tisch")] = (
        "language"
    )
    bad[add("b-tiny.png", noise(8, 8), "a very small drawing of a dot")] = "image_too_small"
    bad[add("b-wide.png", noise(400, 20), "a very wide banner drawing")] = "aspect_ratio"
    bad[add("b-blocked.png", noise(), "a drawing from a spam site",
            page_url=f"http://www.{BLOCKED_DOMAIN}/page.html")] = "url_blocked"  # fmt: skip
    # The same domain as a resolver reads it: upper case, a full-width dot, a root dot.
    respelled = BLOCKED_DOMAIN.upper().replace(".", "\uff0e") + "."
    bad[add("b-blocked-respelled.png", noise(), "a drawing from a spam site",
            page_url=f"http://WWW.{respelled}/page.html")] = "url_blocked"  # fmt: skip
    bad[add("b-missing.png", None, "a drawing that is not there")] = "download_failed"
    bad[add("b-garbage.png", b"this is not an image at all", "a broken drawing file")] = (
        "download_failed"
    )
    bad[add("b-zero.png", b"", "an empty drawing file")] = "download_failed"


def write_eval_dataset(path: Path, split: str = "test") -> None:
    """A CLIP_benchmark-layout WebDataset of Fashion-MNIST test images: {path}/{split}/0.tar."""
    images, labels = fashion_mnist("test")
    (path / split).mkdir(parents=True, exist_ok=True)
    with open(path / split / "0.tar", "wb") as stream, SampleWriter(stream) as sink:
        for j in range(EVAL_IMAGES):
            sink.write(f"s{j:04d}", {"png": _png(Image.fromarray(images[j])),
                                     "cls": str(int(labels[j])).encode()})  # fmt: skip


def download(rows: list[dict[str, Any]], out_dir: Path, work_dir: Path, per_shard: int) -> None:
    """Run real img2dataset over the rows into ``out_dir`` (webdataset, sha256, extra cols)."""
    import img2dataset

    work_dir.mkdir(parents=True, exist_ok=True)
    url_list = work_dir / "candidates.parquet"
    pd.DataFrame(rows).to_parquet(url_list)
    # img2dataset's own Downloader, run shard by shard in this process: its spawn pool
    # would start a fresh interpreter that re-imports img2dataset's heavy dependencies
    # (tens of seconds on a loaded 2-core machine) for a few dozen images. The module is
    # taken from sys.modules because the attribute `img2dataset.main` is the CLI function.
    i2d_main = sys.modules["img2dataset.main"]
    with mock.patch.object(i2d_main, "multiprocessing_distributor", _in_process_distributor):
        _run_img2dataset(img2dataset, url_list, out_dir, per_shard)


def _in_process_distributor(
    processes_count: int, downloader: Any, reader: Any, _: Any, max_shard_retry: int
) -> None:
    failed = [row for status, row in map(downloader, reader) if status is False]
    if failed:
        raise RuntimeError(f"img2dataset failed on shards {failed}")


def _run_img2dataset(img2dataset: Any, url_list: Path, out_dir: Path, per_shard: int) -> None:
    img2dataset.download(
        url_list=str(url_list),
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        save_additional_columns=["page_url", "source"],
        output_format="webdataset",
        output_folder=str(out_dir),
        processes_count=1,
        thread_count=8,
        image_size=256,
        resize_mode="center_crop",
        encode_format="jpg",
        compute_hash="sha256",
        number_sample_per_shard=per_shard,
        incremental_mode="incremental",
        timeout=5,
        retries=0,
        disallowed_header_directives=[],
        enable_wandb=False,
        distributor="multiprocessing",
    )
