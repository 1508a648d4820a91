"""Building blocks of the demo web: the site writer that records every expected pair."""

from __future__ import annotations

import html
import io
import posixpath
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

ORIGIN = "__ORIGIN__"
"""Placeholder the server replaces by its own origin in HTML, so pages carry absolute links."""


@dataclass
class Item:
    """One image as placed on a page: its path on the site, caption and provenance."""

    path: str
    caption: str
    source: str
    label: str | None = None
    hidpi_path: str | None = None


def png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as PNG."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


class Site:
    """Writes files under ``out_dir`` and records the pairs a correct crawler must find."""

    def __init__(self, out_dir: Path, seed: int) -> None:
        self.out_dir = out_dir
        self.rng = random.Random(seed)
        self.pairs: list[dict[str, str]] = []
        self.pages: list[str] = []

    def write(self, path: str, data: bytes) -> str:
        """Write a file at its URL path under the site folder; return the path."""
        target = self.out_dir / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return path

    def expect(self, url: str, caption: str, page: str) -> None:
        """Record a pair a correct crawler must find on ``page``."""
        self.pairs.append({"url": url, "caption": caption, "page": page})

    def img_html(self, item: Item, page: str) -> str:
        """Render one image in a randomly chosen (but recorded) markup style."""
        alt = html.escape(item.caption, quote=True)
        src = self._src_form(item.path, page)
        styles = ["plain", "plain", "plain", "figure_empty_alt", "figure_credit"]
        if item.hidpi_path:
            styles += ["srcset_x", "srcset_w"]
        style = self.rng.choice(styles)
        url, markup = item.path, f'<img src="{src}" alt="{alt}">'
        if style == "figure_empty_alt":
            markup = f'<figure><img src="{src}" alt=""><figcaption>{alt}</figcaption></figure>'
        elif style == "figure_credit":
            markup = f"<figure>{markup}<figcaption>Photo: shop archive</figcaption></figure>"
        elif style.startswith("srcset") and item.hidpi_path:
            big = self._src_form(item.hidpi_path, page)
            sizes = ("1x", "2x") if style == "srcset_x" else ("28w", "56w")
            srcset = f"{src} {sizes[0]}, {big} {sizes[1]}"
            markup = f'<img src="{src}" srcset="{srcset}" alt="{alt}" loading="lazy">'
            url = item.hidpi_path
        self.expect(url, item.caption, page)
        return markup

    def _src_form(self, path: str, page: str) -> str:
        form = self.rng.choice(("root", "root", "relative", "absolute"))
        if form == "relative":
            return posixpath.relpath(path, posixpath.dirname(page) or "/")
        return f"{ORIGIN}{path}" if form == "absolute" else path

    def raw_page(self, path: str, data: bytes) -> str:
        """Write a page's bytes exactly as given (malformed markup, invalid UTF-8)."""
        self.pages.append(path)
        return self.write(path, data)

    def page(self, path: str, title: str, body: str, links: list[str]) -> str:
        """Write an HTML page; ``links`` are hrefs exactly as they appear in the markup."""
        nav = " | ".join(f'<a href="{html.escape(h)}">{html.escape(h)}</a>' for h in links)
        doc = (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title></head>\n<body><h1>{html.escape(title)}</h1>\n"
            f"<nav>{nav}</nav>\n<main>\n{body}\n</main></body></html>\n"
        )
        self.pages.append(path)
        target = path + "index.html" if path.endswith("/") else path
        self.write(target, doc.encode("utf-8"))
        return path
