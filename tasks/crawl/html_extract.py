"""Image-text pairs and links from one HTML page.

Every ``<img>`` gives one pair: its URL (the largest ``srcset`` candidate when there is one,
else ``src``, else ``data-src``) and its caption (the ``alt`` text, or the enclosing
``<figure>``'s ``<figcaption>`` when the alt is empty). URLs are resolved against the page
(or its ``<base href>``) and normalised, so the same image written two ways is one URL.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from lxml import etree

_CHARSET_HEADER = re.compile(r"charset\s*=\s*[\"']?([\w.:-]+)", re.I)
_CHARSET_META = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?([\w.:-]+)", re.I)
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"
# Exactly what normalize_url leaves unchanged: lower-case host, no default port, no fragment,
# only characters that need no escaping, and no ";" in the path (urljoin drops an empty one).
_PATH_CHARS = r"[\w\-.~/%:@!$&'()*+,=]"
_QUERY = r"(?:\?[\w\-.~/%:@!$&'()*+,;=?]+)?\Z"
_NORMAL_ABSOLUTE = re.compile(
    r"(?P<origin>(?P<scheme>https?)://[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63})*"
    r"(?::(?P<port>[1-9]\d{0,4}))?)"
    rf"(?P<path>/{_PATH_CHARS}*){_QUERY}",
    re.ASCII,
)
_PLAIN_RELATIVE = re.compile(rf"{_PATH_CHARS}+{_QUERY}", re.ASCII)
_DEFAULT_PORT = {"http": "80", "https": "443"}
_DOT_SEGMENT = re.compile(r"(?:^|/)\.{1,2}(?:/|\?|$)")
_CONTROLS_TO_SPACE = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)], " ")


class PageParseError(ValueError):
    """The page's bytes do not parse as HTML at all (not even leniently)."""


@dataclass
class PageExtract:
    """What one page yields: (url, caption) pairs in page order, links to follow, the
    images that gave no pair, counted by reason (``page_cap``: past the per-page cap), and
    how many ``<a href>`` came after the per-page link cap."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    skipped_images: Counter[str] = field(default_factory=Counter)
    links_over_cap: int = 0


def decode_html(body: bytes, content_type: str | None = None) -> tuple[str, bool]:
    """Decode page bytes by the header charset, else a ``<meta charset>``, else UTF-8.

    Returns the text and whether bytes were invalid in that encoding (replaced by U+FFFD).
    """
    match = _CHARSET_HEADER.search(content_type or "")
    charset = match.group(1) if match else None
    if charset is None:
        meta = _CHARSET_META.search(body[:2048])
        charset = meta.group(1).decode("ascii", "replace") if meta else "utf-8"
    try:
        "".encode(charset)
    except LookupError:
        charset = "utf-8"
    try:
        return body.decode(charset), False
    except UnicodeDecodeError:
        return body.decode(charset, errors="replace"), True


def clean_text(text: str) -> str:
    """Collapse whitespace and drop control characters (alt texts come from anywhere)."""
    # Printable text has no control characters and no whitespace other than " ".
    if text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " ":
        return text
    return " ".join(text.translate(_CONTROLS_TO_SPACE).split())


def normalize_url(url: str, base: str | None = None) -> str | None:
    """An absolute, normalised http(s) URL, or None for other schemes and unusable URLs.

    Lower-cases scheme and host, drops the default port and the fragment, resolves dot
    segments and percent-encodes what must be encoded (keeping existing escapes).
    """
    url = url.strip()
    return _fast_normalize(url, base) or general_normalize_url(url, base)


def general_normalize_url(url: str, base: str | None = None) -> str | None:
    """normalize_url by full parsing, for every URL (normalize_url skips it for URLs that
    are already normal)."""
    try:
        joined = urljoin(base, url) if base else url
        parts = urlsplit(joined)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            return None
        host = parts.hostname.encode("idna").decode("ascii")
        port = parts.port
    except (ValueError, UnicodeError):
        return None
    if ":" in host:
        host = f"[{host}]"
    netloc = (
        host if port is None or port == {"http": 80, "https": 443}[scheme] else f"{host}:{port}"
    )
    path = quote(_remove_dot_segments(parts.path or "/"), safe=_PATH_SAFE)
    query = quote(parts.query, safe=_QUERY_SAFE)
    return urlunsplit((scheme, netloc, path, query, ""))


def _normal_absolute(url: str) -> re.Match[str] | None:
    """A match when ``url`` is already exactly what normalize_url would return."""
    match = _NORMAL_ABSOLUTE.match(url)
    if match is None or _DOT_SEGMENT.search(match["path"]):
        return None
    port = match["port"]
    if port is not None and (int(port) > 65535 or port == _DEFAULT_PORT[match["scheme"]]):
        return None
    return match


def _fast_normalize(url: str, base: str | None) -> str | None:
    """The common case without parsing: an already-normal absolute URL, or a plain relative
    path against an already-normal base. None means "take the general path"."""
    if _normal_absolute(url) is not None:
        return url
    if base is None or ":" in url or "//" in url or not _PLAIN_RELATIVE.match(url):
        return None  # (urljoin collapses empty segments of relative paths: leave those to it)
    prefixes = _base_prefixes(base)
    if prefixes is None:
        return None
    if url.startswith("/"):
        return None if _DOT_SEGMENT.search(url) else prefixes[0] + url
    # Leading "./" and "../" (pages linking "../img/x.png") step up from the base directory.
    up = 0
    while url.startswith(("./", "../")):
        up += url.startswith("../")
        url = url[3:] if url.startswith("../") else url[2:]
    if _DOT_SEGMENT.search(url) or not url:
        return None
    directory = prefixes[1]
    for _ in range(up):
        if len(directory) <= len(prefixes[0]) + 1:
            return None  # above the root: leave it to the general path
        directory = directory[: directory.rstrip("/").rfind("/") + 1]
    return directory + url


@functools.lru_cache(maxsize=256)
def _base_prefixes(base: str) -> tuple[str, str] | None:
    """(origin, directory URL) of a normal base URL without empty path segments, or None.
    Cached: every link on a page or WAT record shares one base."""
    match = _normal_absolute(base)
    if match is None or "//" in match["path"]:
        return None
    path = match["path"]
    return match["origin"], match["origin"] + path[: path.rfind("/") + 1]


def _remove_dot_segments(path: str) -> str:
    out: list[str] = []
    for segment in path.split("/")[1:] if path.startswith("/") else path.split("/"):
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    trailing = "/" if path.endswith(("/.", "/..")) else ""
    return "/" + "/".join(out) + trailing


def _srcset_candidates(srcset: str) -> Iterator[tuple[str, str]]:
    """(url, descriptor) pairs, split as the HTML standard does: a URL is a run of
    non-space characters (commas inside it are kept), a trailing comma ends a candidate."""
    pos, end = 0, len(srcset)
    while pos < end:
        while pos < end and (srcset[pos].isspace() or srcset[pos] == ","):
            pos += 1
        start = pos
        while pos < end and not srcset[pos].isspace():
            pos += 1
        url = srcset[start:pos]
        if not url:
            return
        if url.endswith(","):
            yield url.rstrip(","), ""
            continue
        start = pos
        while pos < end and srcset[pos] != ",":
            pos += 1
        yield url, srcset[start:pos].strip()


def best_srcset_candidate(srcset: str) -> str | None:
    """The largest candidate of a srcset (by ``w``, else by ``x`` density)."""
    best: tuple[int, float, str] | None = None
    for url, descriptor in _srcset_candidates(srcset):
        descriptor = (descriptor.split() or ["1x"])[0].lower()
        try:
            value = float(descriptor[:-1])
        except ValueError:
            continue
        rank = (1 if descriptor.endswith("w") else 0, value, url)
        if best is None or rank[:2] > best[:2]:
            best = rank
    return best[2] if best else None


def _figcaption(img: etree._Element) -> str:
    for figure in img.iterancestors("figure"):
        caption = figure.find(".//figcaption")
        return clean_text("".join(caption.itertext())) if caption is not None else ""
    return ""


def _image_pair(img: etree._Element, base: str) -> tuple[str, str] | str:
    """(url, caption) for one ``<img>``, or the reason it gives none."""
    srcset = img.get("srcset")
    raw = (
        (best_srcset_candidate(srcset) if srcset else None) or img.get("src") or img.get("data-src")
    )
    if not raw or not raw.strip():
        return "no_src"
    if raw.strip().lower().startswith("data:"):
        return "data_uri"
    url = normalize_url(raw, base)
    if url is None:
        return "unusable_url"
    caption = clean_text(img.get("alt") or "")
    return url, caption or _figcaption(img)


def parse_html(text: str) -> etree._Element:
    """Parse leniently; PageParseError when nothing parses (an empty document)."""
    # libxml2 stops at NUL; control bytes never carry meaning in markup.
    cleaned = text.replace("\x00", "")
    try:
        root = etree.fromstring(cleaned.encode("utf-8"), _PARSER)
    except (etree.XMLSyntaxError, ValueError) as e:
        raise PageParseError(str(e) or "empty document") from e
    if root is None:
        raise PageParseError("empty document")
    return root


# Plain etree elements: lxml.html's element classes cost a lookup per element.
_PARSER = etree.HTMLParser(encoding="utf-8", remove_comments=True)


def extract_page(
    text: str, page_url: str, max_images: int | None = None, max_links: int | None = None
) -> PageExtract:
    """Pairs and followable links of one decoded page fetched from ``page_url``: at most
    ``max_images`` pairs and ``max_links`` distinct links; the rest are only counted."""
    doc = parse_html(text)
    base = page_url
    base_el = doc.find(".//base[@href]")
    if base_el is not None:
        base = normalize_url(base_el.get("href", ""), page_url) or page_url
    out = PageExtract()
    for img in doc.iter("img"):
        if max_images is not None and len(out.pairs) >= max_images:
            out.skipped_images["page_cap"] += 1
            continue
        found = _image_pair(img, base)
        if isinstance(found, str):
            out.skipped_images[found] += 1
        else:
            out.pairs.append(found)
    seen: set[str] = set()
    for anchor in doc.iter("a"):
        href = anchor.get("href")
        if not href:
            continue
        if max_links is not None and len(out.links) >= max_links:
            out.links_over_cap += 1
            continue
        link = normalize_url(href, base)
        if link is not None and link not in seen:
            seen.add(link)
            out.links.append(link)
    return out
