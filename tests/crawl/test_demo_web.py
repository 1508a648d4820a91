"""The demo web: captions, planted cases and hostile endpoints, checked on the served site."""

from __future__ import annotations

import importlib.util
import io
import json
import random
import socket
import struct
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest
from PIL import Image

from demo.captions import FASHION_FORMS, emoji_caption, fashion_caption
from demo.offline_data import FASHION_MNIST_CLASSES
from demo.web import main


def get(url: str, timeout: float = 5.0) -> tuple[int, Message, bytes]:
    """Status, headers (case-insensitive) and body of one GET."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, b""


def eval_prompts() -> set[str]:
    """Every zero-shot prompt clip_benchmark would build for the Fashion-MNIST classes and
    their synonyms, from its template file (read as data: importing it costs torch)."""
    spec = importlib.util.find_spec("clip_benchmark")
    assert spec is not None and spec.submodule_search_locations
    path = Path(
        spec.submodule_search_locations[0], "datasets", "en_zeroshot_classification_templates.json"
    )
    templates = {t for group in json.loads(path.read_text()).values() for t in group}
    names = set(FASHION_MNIST_CLASSES)
    for singular, plural, synonyms in FASHION_FORMS.values():
        names |= {singular, plural, *synonyms}
    return {_norm(t.replace("{c}", name)) for t in templates for name in names}


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


def test_fashion_captions_name_their_class_and_are_never_prompts(demo_web) -> None:
    label_of = {r["url"]: r["label"] for r in demo_web.planted["fashion"]}
    captions = []
    for pair in demo_web.planted["pairs"]:
        label = label_of.get(pair["url"].replace("@2x", ""))
        if label is not None:
            assert label in pair["caption"].lower(), pair
            captions.append(pair["caption"])
    assert len(set(captions)) > 0.8 * len(captions)  # varied phrasings
    rng = random.Random(1)
    generated = [fashion_caption(c, rng) for c in FASHION_MNIST_CLASSES for _ in range(500)]
    generated += [emoji_caption(c, rng) for c in FASHION_MNIST_CLASSES for _ in range(50)]
    prompts = eval_prompts()
    assert len(prompts) > 1000
    clashes = {c for c in [*captions, *generated] if _norm(c) in prompts}
    assert not clashes


def test_planted_ground_truth(demo_web) -> None:
    planted, site = demo_web.planted, demo_web.site_dir
    fashion = planted["fashion"]
    assert len(fashion) == 10 * 20 + len(planted["test_set_copies"])
    assert 1 <= len(planted["test_set_copies"]) <= 0.02 * len(fashion)
    assert all(r["split"] == "test" for r in planted["test_set_copies"])

    def read(path: str) -> bytes:
        return (site / path.split("?")[0].lstrip("/")).read_bytes()

    for case in planted["exact_duplicates"]:
        assert all(read(copy) == read(case["original"]) for copy in case["copies"])
    kinds = set()
    for case in planted["near_duplicates"]:
        assert read(case["copy"]) != read(case["original"])
        kinds.add(case["kind"])
    assert kinds == {"jpeg_reencode", "resized", "cropped", "brightened"}
    bad_kinds = {c["kind"] for c in planted["bad_captions"]}
    assert {"empty_alt", "boilerplate", "file_name", "very_long", "non_english"} <= bad_kinds
    assert all("spamnet" in url for url in planted["blocklist"]["urls"])
    assert set(planted["hostile"]["images"]) >= {
        "http_404", "http_500", "slow_drip", "redirect_loop", "redirect_to_image",
        "not_an_image", "truncated_jpeg", "zero_bytes", "decompression_bomb", "x_robots_noai",
    }  # fmt: skip


def test_static_pages_and_robots(demo_web) -> None:
    status, headers, body = get(demo_web.url + "/fashion/page-001.html")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"__ORIGIN__" not in body and demo_web.url.encode() in body
    status, _, body = get(demo_web.url + "/robots.txt")
    assert status == 200 and b"Disallow: /private/" in body


def test_hostile_images_misbehave(demo_web) -> None:
    images = {k: demo_web.abs(v) for k, v in demo_web.planted["hostile"]["images"].items()}
    assert get(images["http_404"])[0] == 404
    assert get(images["http_500"])[0] == 500
    assert get(images["redirect_loop"])[0] in (301, 302)  # urllib gives up on the loop
    status, headers, body = get(images["x_robots_noai"])
    assert status == 200 and "noai" in headers["X-Robots-Tag"]
    Image.open(io.BytesIO(body)).load()
    status, headers, body = get(images["redirect_to_image"])
    assert status == 200 and headers["Content-Type"] == "image/png"
    status, headers, body = get(images["not_an_image"])
    assert headers["Content-Type"] == "image/jpeg" and body.startswith(b"<html>")
    assert get(images["zero_bytes"])[2] == b""
    with pytest.raises(OSError):
        Image.open(io.BytesIO(get(images["truncated_jpeg"])[2])).load()
    bomb = get(images["decompression_bomb"])[2]
    assert len(bomb) < 100_000
    assert struct.unpack(">II", bomb[16:24]) == (20_000, 20_000)  # IHDR width, height


def test_stall_and_drip(demo_web) -> None:
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        get(demo_web.abs("/hostile/stall.jpg"), timeout=0.5)
    started = time.monotonic()
    with urllib.request.urlopen(demo_web.abs("/hostile/slow-drip.jpg"), timeout=5) as resp:
        assert int(resp.headers["Content-Length"]) > 1000
        assert resp.read(2) == b"\xff\xd8"
    assert time.monotonic() - started >= 1.5  # one byte a second


def test_command_line(tmp_path: Path, demo_web) -> None:
    with pytest.raises(SystemExit, match="2"):
        main(["serve", str(tmp_path)])  # not a built site
    assert main(["build", str(tmp_path / "site"), "--size", "test"]) == 0
    assert (
        json.loads((tmp_path / "site" / "planted.json").read_text())["pairs"]
        == (demo_web.planted["pairs"])
    )  # the build is deterministic
