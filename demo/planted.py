"""The demo web's planted cases: duplicates, bad captions, malformed pages, blocklist targets,
a robots.txt-disallowed page and the hostile page, each recorded in ``planted.json``.

Spare images (real Fashion-MNIST train images used nowhere else) carry the planted captions,
so a planted case is never also an accidental duplicate of a regular image.
"""

from __future__ import annotations

import html
import io
import random
import struct
import zlib
from collections.abc import Iterator
from typing import Any

from PIL import Image, ImageEnhance

from demo.captions import fashion_caption
from demo.server import (
    HOSTILE_IMAGE_ROUTES,
    HOSTILE_PAGE_ROUTES,
    REDIRECT_PAGE_TARGET,
)
from demo.site import Item, Site, png_bytes
from tasks.curate.phash import flatten_alpha

Spare = Iterator[tuple[Image.Image, str]]
LONG_ALT_CHARS = 5000
BOMB_SIDE = 20_000


def _img(src: str, caption: str | None) -> str:
    alt = "" if caption is None else f' alt="{html.escape(caption, quote=True)}"'
    return f'<img src="{src}"{alt}>'


def _spare_png(site: Site, spare: Spare, path: str) -> tuple[str, str]:
    image, label = next(spare)
    return site.write(path, png_bytes(image)), label


def _load(site: Site, path: str) -> Image.Image:
    """The picture a browser (or img2dataset) shows: transparency composited onto white. A
    plain ``convert("RGB")`` would show the colours stored under transparent pixels, so a
    "copy" of an emoji could be another picture altogether."""
    return flatten_alpha(Image.open(site.out_dir / path.lstrip("/")))


def _near_copy(image: Image.Image, kind: str) -> tuple[bytes, str]:
    """A slightly altered copy of ``image``: re-encoded, resized, cropped or brightened."""
    w, h = image.size
    if kind == "resized":
        image = image.resize((w + w // 8, h + h // 8), Image.Resampling.BILINEAR)
    elif kind == "cropped":
        image = image.crop((1, 1, w - 1, h - 1))
    elif kind == "brightened":
        image = ImageEnhance.Brightness(image).enhance(1.15)
    if kind == "jpeg_reencode":
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=70)
        return buf.getvalue(), ".jpg"
    return png_bytes(image), ".png"


def plant_duplicates(site: Site, fashion: list[Item], emoji: list[Item]) -> dict[str, Any]:
    """Exact copies (same bytes, new URL, new caption), near copies, and a repeated pair."""
    page = "/planted/duplicates.html"
    parts, exact, near = [], [], []
    for k, item in enumerate(fashion[1:4] + emoji[:2]):
        path = site.write(
            f"/img/dup/exact-{k:02d}.png", (site.out_dir / item.path[1:]).read_bytes()
        )
        caption = (
            fashion_caption(item.label, site.rng)
            if item.source == "fashion-mnist" and item.label
            else f"repost of {item.caption}"
        )
        if caption == item.caption:
            caption = f"{caption} (again)"
        parts.append(_img(path, caption))
        site.expect(path, caption, page)
        exact.append({"original": item.path, "copies": [path], "caption": caption})
    kinds = ("jpeg_reencode", "resized", "cropped", "brightened")
    for k, item in enumerate(fashion[4:8] + emoji[2:6]):
        kind = kinds[k % len(kinds)]
        data, ext = _near_copy(_load(site, item.path), kind)
        path = site.write(f"/img/dup/near-{k:02d}{ext}", data)
        parts.append(_img(path, item.caption))
        site.expect(path, item.caption, page)
        near.append({"original": item.path, "copy": path, "kind": kind})
    repeated = fashion[1]
    parts.append(_img(repeated.path, repeated.caption))
    site.expect(repeated.path, repeated.caption, page)
    site.page(page, "Seen it before", "\n".join(parts), ["/planted/"])
    return {
        "exact_duplicates": exact,
        "near_duplicates": near,
        "repeated_pairs": [{"url": repeated.path, "caption": repeated.caption}],
    }


def plant_bad_captions(site: Site, spare: Spare) -> list[dict[str, Any]]:
    """Alt texts curation must catch: empty, missing, boilerplate, file names, huge, foreign."""
    page = "/planted/captions.html"
    long_alt = ("a very long description of a warm winter coat with many pockets " * 100)[
        :LONG_ALT_CHARS
    ]
    cases: list[tuple[str, str | None, str]] = [
        ("empty_alt", "", ""),
        ("missing_alt", None, ""),
        ("boilerplate", "image", "image"),
        ("boilerplate", "untitled", "untitled"),
        ("file_name", "IMG_1234.jpg", "IMG_1234.jpg"),
        ("very_long", long_alt, long_alt.strip()),
        ("non_english", "une robe rouge pour l'été", "une robe rouge pour l'été"),
        ("non_english", "冬用の黒いコート", "冬用の黒いコート"),
        ("entities", "shirt &amp; tie, 50% off", "shirt & tie, 50% off"),
        ("whitespace", "  a   striped\n\tshirt  ", "a striped shirt"),
    ]
    parts, records = [], []
    for k, (kind, raw, expected) in enumerate(cases):
        path, label = _spare_png(site, spare, f"/img/misc/caption-{k:02d}.png")
        # Entities are written raw (already escaped); everything else is escaped here.
        markup = f'<img src="{path}" alt="{raw}">' if kind == "entities" else _img(path, raw)
        parts.append(markup)
        site.expect(path, expected, page)
        records.append({"url": path, "kind": kind, "caption": expected, "label": label})
    site.page(page, "Captions gone wrong", "\n".join(parts), ["/planted/"])
    return records


def plant_invalid_utf8(site: Site, spare: Spare) -> list[dict[str, Any]]:
    """A page declared UTF-8 whose alt texts hold Latin-1 and stray bytes."""
    page = "/planted/invalid-utf8.html"
    raws = [b"caf\xe9 cr\xe8me dress for summer", b"\xff\xfe broken \xc3\x28 coat bytes"]
    body = b'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>\n'
    records = []
    for k, raw in enumerate(raws):
        path, _ = _spare_png(site, spare, f"/img/misc/utf8-{k:02d}.png")
        body += b'<img src="' + path.encode() + b'" alt="' + raw + b'">\n'
        caption = " ".join(raw.decode("utf-8", errors="replace").split())
        site.expect(path, caption, page)
        records.append({"url": path, "raw_alt_hex": raw.hex(), "caption": caption})
    site.raw_page(page, body + b'<a href="/planted/">back</a></body></html>\n')
    return records


def plant_blocklist(site: Site, spare: Spare) -> dict[str, Any]:
    """URLs a curate blocklist can target by path prefix or query (no foreign domain offline)."""
    page = "/planted/sponsored.html"
    parts, urls = [], []
    for k in range(4):
        image, label = next(spare)
        if k % 2 == 0:
            path = site.write(f"/sponsored/ad-{k:02d}.png", png_bytes(image)) + "?affiliate=spamnet"
        else:
            path = site.write(f"/img/misc/promo-{k:02d}.png", png_bytes(image))
            path += "?utm_source=spamnet-ads"
        caption = fashion_caption(label, site.rng)
        parts.append(_img(html.escape(path), caption))
        site.expect(path, caption, page)
        urls.append(path)
    site.page(page, "Sponsored", "\n".join(parts), ["/planted/"])
    return {
        "note": "A blocklisted domain cannot exist offline; target these by path or query.",
        "path_prefix": "/sponsored/",
        "query_substring": "spamnet",
        "urls": urls,
    }


def plant_malformed(site: Site, spare: Spare) -> dict[str, Any]:
    """Broken markup a lenient parser still reads, and one page of binary junk."""
    paths = [_spare_png(site, spare, f"/img/misc/malformed-{k:02d}.png") for k in range(6)]
    (p0, _), (p1, _), (p2, _), (p3, _), (p4, _), (p5, _) = paths
    pages = {
        "/planted/malformed-1.html": (
            "<html><body><div><p>unclosed tags everywhere\n"
            f'<p><img src="{p0}" alt="a pullover left on a chair">\n'
            f"<p><img src={p1} alt=sneakers>\n"
            f'<table><tr><td><IMG SRC="{p2}" ALT="Grey Coat &amp; Scarf"></td>\n'
            "</span></div></div></div><a href=malformed-2.html>next"
        ),
        "/planted/malformed-2.html": (
            f"<img src='{p3}' alt='single quoted dress'>\n"
            f'<img alt="alt before src" src="{p4}"/>\n'
            '<a href="malformed-3.html">next</a><!-- a comment that never ends'
        ),
        "/planted/malformed-3.html": (
            "<html><head><title>nested</title><body><a href='/planted/'><a href='/'>x</a>"
            f'<foo:bar><img src="{p5}" alt="bag with a &quot;quoted&quot; name" ></foo:bar>'
            '<script>document.write(\'<img src="/nope.png" alt="not real">\')</script>'
        ),
    }
    expected = {
        "/planted/malformed-1.html": [
            (p0, "a pullover left on a chair"), (p1, "sneakers"), (p2, "Grey Coat & Scarf"),
        ],
        "/planted/malformed-2.html": [(p3, "single quoted dress"), (p4, "alt before src")],
        "/planted/malformed-3.html": [(p5, 'bag with a "quoted" name')],
    }  # fmt: skip
    for page, markup in pages.items():
        site.raw_page(page, markup.encode())
        for path, caption in expected[page]:
            site.expect(path, caption, page)
    junk = random.Random(7).randbytes(4096).replace(b"<", b"")
    site.raw_page("/planted/garbage.html", junk)
    return {"pages": sorted(pages), "junk_page": "/planted/garbage.html"}


def plant_base_href(site: Site, spare: Spare) -> str:
    """Relative image URLs resolved against ``<base href>``, not the page's own URL."""
    page = "/planted/base-href.html"
    path, label = _spare_png(site, spare, "/img/misc/base-00.png")
    caption = fashion_caption(label, site.rng)
    site.expect(path, caption, page)
    body = f'<base href="/img/misc/">\n{_img("base-00.png", caption)}'
    site.page(page, "Base href", body, ["/planted/"])
    return page


def plant_robots_disallowed(site: Site, spare: Spare) -> dict[str, Any]:
    """A page under /private/ (disallowed by robots.txt): its pairs must not be crawled."""
    page = "/private/members.html"
    parts, urls = [], []
    for k in range(2):
        path, label = _spare_png(site, spare, f"/img/private/member-{k:02d}.png")
        parts.append(_img(path, fashion_caption(label, site.rng)))
        urls.append(path)
    site.page(page, "Members only", "\n".join(parts), ["/"])
    return {"pages": [page], "image_urls": urls, "robots_txt": "Disallow: /private/"}


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A 1-bit grayscale PNG of side x side pixels, about 50 KB on disk, built row by row with
    zlib so the 400-megapixel image never exists in memory."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + packed zero pixels
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def _hostile_files(site: Site, spare: Spare) -> dict[str, str]:
    image, _ = next(spare)
    buf = io.BytesIO()
    image.convert("RGB").resize((256, 256)).save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    site.write("/hostile/drip.jpg", jpeg)
    return {
        "not_an_image": site.write(
            "/hostile/not-an-image.jpg", b"<html><body>this is not a JPEG</body></html>\n"
        ),
        "truncated_jpeg": site.write("/hostile/truncated.jpg", jpeg[: len(jpeg) // 2]),
        "zero_bytes": site.write("/hostile/empty.jpg", b""),
        "decompression_bomb": site.write("/hostile/bomb.png", bomb_png()),
    }


def plant_hostile(site: Site, spare: Spare) -> dict[str, Any]:
    """The hostile page: images on misbehaving endpoints and links to misbehaving pages."""
    page = "/hostile.html"
    images = {**HOSTILE_IMAGE_ROUTES, **_hostile_files(site, spare)}
    parts = []
    for kind, path in images.items():
        caption = f"hostile test image: {kind.replace('_', ' ')}"
        parts.append(_img(path, caption))
        site.expect(path, caption, page)
    target, label = _spare_png(site, spare, "/img/misc/moved-00.png")
    caption = fashion_caption(label, site.rng)
    site.page(REDIRECT_PAGE_TARGET, "Reached through a redirect", _img(target, caption), ["/"])
    site.expect(target, caption, REDIRECT_PAGE_TARGET)
    links = [*HOSTILE_PAGE_ROUTES.values(), "/hostile/notes.txt"]
    site.write("/hostile/notes.txt", b"plain text, not HTML\n")
    site.page(page, "Hostile endpoints", "\n".join(parts), ["/", *links])
    failures = {
        HOSTILE_PAGE_ROUTES["http_404"]: "http_404",
        HOSTILE_PAGE_ROUTES["http_5xx"]: "http_5xx",
        HOSTILE_PAGE_ROUTES["timeout_stall"]: "timeout",
        HOSTILE_PAGE_ROUTES["timeout_drip"]: "timeout",
        HOSTILE_PAGE_ROUTES["redirect_loop"]: "redirect_loop",
        HOSTILE_PAGE_ROUTES["too_large"]: "too_large",
        "/hostile/notes.txt": "not_html",
    }
    return {"page": page, "images": images, "pages": HOSTILE_PAGE_ROUTES, "page_failures": failures}


def plant_all(site: Site, fashion: list[Item], emoji: list[Item], spare: Spare) -> dict[str, Any]:
    """Write every planted page; return the planted.json sections (and the index's links)."""
    planted: dict[str, Any] = plant_duplicates(site, fashion, emoji)
    planted["bad_captions"] = plant_bad_captions(site, spare)
    planted["invalid_utf8"] = plant_invalid_utf8(site, spare)
    planted["blocklist"] = plant_blocklist(site, spare)
    planted["malformed"] = plant_malformed(site, spare)
    planted["base_href_page"] = plant_base_href(site, spare)
    planted["robots_disallowed"] = plant_robots_disallowed(site, spare)
    planted["hostile"] = plant_hostile(site, spare)
    planted["redirect_only_pages"] = [REDIRECT_PAGE_TARGET]
    planted_pages = [
        "duplicates.html", "captions.html", "invalid-utf8.html", "sponsored.html",
        "malformed-1.html", "garbage.html", "base-href.html",
    ]  # fmt: skip
    site.page("/planted/", "Planted cases", "<p>Cases.</p>", ["/", *planted_pages])
    planted["index_links"] = ["/planted/", "/hostile.html", "/private/members.html"]
    return planted
