"""Extraction of (image url, caption) pairs and links from single pages."""

from __future__ import annotations

import random

import pytest

from tasks.crawl.html_extract import (
    PageParseError,
    best_srcset_candidate,
    decode_html,
    extract_page,
    general_normalize_url,
    normalize_url,
)

PAGE = "http://Example.COM:80/shop/items/list.html?page=2#top"


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("../img/a.png", "http://example.com/shop/img/a.png"),
        ("/img/./b/../c.png", "http://example.com/img/c.png"),
        ("HTTPS://CDN.Example.com:443/x.png#frag", "https://cdn.example.com/x.png"),
        ("//cdn.example.com/y.png", "http://cdn.example.com/y.png"),
        ("my photo.png", "http://example.com/shop/items/my%20photo.png"),
        ("a%20b.png?q=1&r=ü", "http://example.com/shop/items/a%20b.png?q=1&r=%C3%BC"),
        ("http://bücher.example/k.png", "http://xn--bcher-kva.example/k.png"),
        ("http://example.com:8080", "http://example.com:8080/"),
        ("?page=3", "http://example.com/shop/items/list.html?page=3"),
    ],
)
def test_normalize_url(raw: str, expected: str) -> None:
    assert normalize_url(raw, PAGE) == expected


@pytest.mark.parametrize(
    "raw", ["mailto:a@b.c", "javascript:void(0)", "data:image/png;base64,AA", "http://[::1"]
)
def test_normalize_url_rejects_non_http(raw: str) -> None:
    assert normalize_url(raw, PAGE) is None


def test_srcset_picks_largest() -> None:
    assert best_srcset_candidate("a.png 1x, b.png 2x, c.png 1.5x") == "b.png"
    assert best_srcset_candidate("s.png 320w, l.png 1280w, m.png 640w") == "l.png"
    assert best_srcset_candidate("only.png") == "only.png"
    assert best_srcset_candidate("img,1.png 1x, img,2.png 2x") == "img,2.png"
    assert best_srcset_candidate("   ") is None


def test_pairs_alt_srcset_figcaption_base_and_links() -> None:
    html = """<html><head><base href="/media/"></head><body>
    <img src="a.png" alt="  a red\n  dress  ">
    <img src="b.png" srcset="b.png 1x, b@2x.png 2x" alt="two pullovers">
    <figure><img src="c.png" alt=""><figcaption>my <b>ankle boots</b></figcaption></figure>
    <figure><img src="d.png" alt="leather bag"><figcaption>Photo: shop</figcaption></figure>
    <img src="e.png">
    <img alt="no source at all">
    <img src="data:image/png;base64,iVBOR" alt="inline">
    <img src="javascript:x()" alt="script">
    <a href="../next.html">next</a> <a href="../next.html#again">again</a>
    <a href="mailto:x@y.z">mail</a> <a href="http://other.example/p">other</a>
    </body></html>"""
    page = extract_page(html, "http://site.example/shop/index.html")
    assert page.pairs == [
        ("http://site.example/media/a.png", "a red dress"),
        ("http://site.example/media/b@2x.png", "two pullovers"),
        ("http://site.example/media/c.png", "my ankle boots"),
        ("http://site.example/media/d.png", "leather bag"),
        ("http://site.example/media/e.png", ""),
    ]
    assert dict(page.skipped_images) == {"no_src": 1, "data_uri": 1, "unusable_url": 1}
    assert page.links == ["http://site.example/next.html", "http://other.example/p"]


def test_malformed_markup_still_yields_pairs() -> None:
    html = (
        "<div><p><img src=/a.png alt=sneakers><p><IMG SRC='/b.png' ALT='Grey Coat &amp; Scarf'>"
        '</span></div></div><table><tr><td><img alt="after" src="/c.png"/><!-- never closed'
    )
    pairs = extract_page(html, "http://s.example/").pairs
    assert pairs == [
        ("http://s.example/a.png", "sneakers"),
        ("http://s.example/b.png", "Grey Coat & Scarf"),
        ("http://s.example/c.png", "after"),
    ]


def test_junk_and_empty_pages() -> None:
    junk = bytes(range(256)).replace(b"<", b"") * 8
    text, had_errors = decode_html(junk, "text/html; charset=utf-8")
    assert had_errors
    assert extract_page(text, "http://s.example/").pairs == []
    with pytest.raises(PageParseError):
        extract_page("", "http://s.example/")


def test_invalid_utf8_and_charsets() -> None:
    text, had_errors = decode_html(b'<img src="/x.png" alt="caf\xe9 \xff">', "text/html")
    assert had_errors
    assert extract_page(text, "http://s.example/").pairs == [
        ("http://s.example/x.png", "caf\ufffd \ufffd")
    ]
    latin = b'<meta charset="iso-8859-1"><img src="/y.png" alt="caf\xe9">'
    text, had_errors = decode_html(latin, None)
    assert not had_errors and "café" in text
    text, had_errors = decode_html("é".encode("cp1252"), "text/html; charset=bogus-charset")
    assert had_errors  # an unknown charset falls back to UTF-8, replacing what does not fit


def test_control_characters_and_very_long_alt() -> None:
    alt = "coat\x00with\x07bells " + "x" * 6000
    pairs = extract_page(f'<img src="/l.png" alt="{alt}">', "http://s.example/").pairs
    ((url, caption),) = pairs
    # NUL is dropped before parsing (libxml2 would stop there); other controls become spaces.
    assert caption.startswith("coatwith bells x") and len(caption) == 6015


def test_fast_path_agrees_with_full_parsing() -> None:
    """normalize_url skips parsing for URLs that look normal; on a random mix of normal,
    nearly-normal and odd URLs it must return what full parsing returns."""
    rng = random.Random(0)
    hosts = ["example.com", "Example.com", "a-b.example", "127.0.0.1", "x_y.example", "a..b", ""]
    ports = ["", ":80", ":443", ":8080", ":0", ":99999", ":"]
    pieces = ["a", "B", "/", "./", "../", ".", "..", "%20", "%zz", " ", "é", "?", "#", "=", ":",
              "@", "&", ";", "~", "//", "-", "_", "|", "\\", "'", "(", "*", "q=1"]  # fmt: skip

    def path() -> str:
        return "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 6)))

    def absolute() -> str:
        scheme = rng.choice(["http", "https", "HTTP", "ftp"])
        return f"{scheme}://{rng.choice(hosts)}{rng.choice(ports)}{rng.choice(['', '/'])}{path()}"

    bases = ["http://shop.example/a/b.html?p=1", "http://s.example:8080/x/y/", "http://s.example/"]
    starts = ["", "/", "//h.example/", "?", "a/", "./", "../", "../../", "./../"]
    for _ in range(20_000):
        base = absolute() if rng.random() < 0.5 else rng.choice(bases)
        url = absolute() if rng.random() < 0.3 else rng.choice(starts) + path()
        assert normalize_url(url, base) == general_normalize_url(url.strip(), base), (url, base)
