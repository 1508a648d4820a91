"""Common Crawl input: image-alt pairs from WAT files (the metadata LAION used) and from WARC
files (raw HTML responses, run through the same extractor as the site crawler).

One reader takes both: each record is classified by its type, so a file may even mix them.
WAT ``metadata`` records carry JSON whose ``HTML-Metadata.Links`` list holds one entry per
``<img>`` (``"path": "IMG@/src"``) with its ``alt``; WARC ``response`` records carry the page.
"""

from __future__ import annotations

import functools
import json
import logging
import posixpath
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import fsspec
from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed

from tasks.crawl.html_extract import (
    PageParseError,
    clean_text,
    decode_html,
    extract_page,
    normalize_url,
)

log = logging.getLogger(__name__)

_IMG_PATH = "IMG@/src"
_HTML_TYPES = ("text/html", "application/xhtml+xml")


class ArchiveInputError(ValueError):
    """A WAT/WARC input that cannot be read; the message names the file."""


@dataclass
class ArchiveResult:
    """Pairs as (url, caption, page_url, crawl_time, source), record counts, and the
    records that gave nothing for a reason worth reporting."""

    pairs: list[tuple[str, str, str, datetime, str]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[dict[str, str]] = field(default_factory=list)


def _warc_date(value: str | None) -> datetime:
    """A record's WARC-Date as a UTC datetime (now, when missing or unreadable)."""
    parsed = _parse_warc_date(value) if value else None
    return parsed if parsed is not None else datetime.now(UTC)


@functools.lru_cache(maxsize=4096)
def _parse_warc_date(value: str) -> datetime | None:
    # Cached: records written in the same second share one date.
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def wat_pairs(payload: dict[str, Any]) -> tuple[str | None, list[tuple[str, str]], int]:
    """The page URL, its (image url, alt) pairs, and how many image links had no usable
    http(s) URL (``data:`` URIs, junk), from one parsed WAT JSON record."""
    envelope = payload.get("Envelope") or {}
    page_url = (envelope.get("WARC-Header-Metadata") or {}).get("WARC-Target-URI")
    html_meta = ((envelope.get("Payload-Metadata") or {}).get("HTTP-Response-Metadata") or {}).get(
        "HTML-Metadata"
    ) or {}
    base = (html_meta.get("Head") or {}).get("Base") or page_url
    pairs, unusable = [], 0
    for link in html_meta.get("Links") or ():
        if link.get("path") != _IMG_PATH:
            continue
        url = normalize_url(link.get("url") or "", base)
        if url is None:
            unusable += 1
        else:
            pairs.append((url, clean_text(link.get("alt") or "")))
    return page_url, pairs, unusable


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError for the 3xx


def _open(uri: str, storage_options: dict[str, Any], timeout: float) -> IO[bytes]:
    """A byte stream of one archive. Over http(s) redirects are not followed: the SSRF guard
    checked the URI itself and cannot check where a redirect would lead."""
    try:
        if uri.startswith(("http://", "https://")):
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects)
            return opener.open(uri, timeout=timeout)
        return fsspec.open(uri, "rb", **storage_options).open()
    except urllib.error.HTTPError as e:
        raise ArchiveInputError(
            f"crawl.wat_files: {uri}: HTTP {e.code} (redirects are not followed)"
        ) from e
    except OSError as e:
        raise ArchiveInputError(f"crawl.wat_files: cannot open {uri}: {e}") from e


def read_archive(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    max_page_bytes: int = 5_000_000,
    timeout: float = 60.0,
) -> ArchiveResult:
    """All image-text pairs in one WAT or WARC file (gzip or plain; a local path, any fsspec
    URI, or http(s)). ``timeout`` bounds each network read, in seconds."""
    result = ArchiveResult()
    name = posixpath.basename(uri.rstrip("/"))
    with _open(uri, storage_options or {}, timeout) as stream:
        try:
            for record in _records(stream, uri):
                _read_record(record, name, max_page_bytes, result)
        except (ArchiveLoadFailed, OSError, EOFError, ValueError) as e:
            if isinstance(e, ArchiveInputError):
                raise
            raise ArchiveInputError(
                f"crawl.wat_files: {uri} is not a readable WARC/WAT archive "
                f"(after {result.counts['records']} records): {e}"
            ) from e
    return result


def _records(stream: IO[bytes], uri: str) -> Iterator[Any]:
    first = True
    for record in ArchiveIterator(stream):
        # warcio reads any line of text as an old-style ARC header; Common Crawl is WARC.
        if record.format != "warc":
            raise ArchiveInputError(f"crawl.wat_files: {uri} is not a WARC/WAT archive")
        first = False
        yield record
    if first:
        raise ArchiveInputError(f"crawl.wat_files: {uri} holds no WARC records")


def _read_record(record: Any, name: str, max_page_bytes: int, result: ArchiveResult) -> None:
    counts = result.counts
    counts["records"] += 1
    headers = record.rec_headers
    ctype = (headers.get_header("Content-Type") or "").lower()
    if record.rec_type == "metadata" and ctype.startswith("application/json"):
        counts["wat_records"] += 1
        try:
            page_url, pairs, unusable = wat_pairs(json.loads(record.content_stream().read()))
        except (ValueError, AttributeError) as e:
            counts["wat_records_bad_json"] += 1
            target = headers.get_header("WARC-Target-URI") or ""
            result.errors.append({"url": target, "reason": "bad_wat_json", "detail": str(e)})
            return
        counts["wat_images_unusable_url"] += unusable
        source = f"wat:{name}"
    elif record.rec_type == "response" and record.http_headers is not None:
        counts["warc_responses"] += 1
        page_url = headers.get_header("WARC-Target-URI")
        pairs = _warc_response_pairs(record, page_url, max_page_bytes, counts)
        source = f"warc:{name}"
    else:
        counts["records_other"] += 1
        return
    when = _warc_date(headers.get_header("WARC-Date"))
    counts[f"pairs_found_{source.split(':')[0]}"] += len(pairs)
    result.pairs.extend((url, caption, page_url or "", when, source) for url, caption in pairs)


def _warc_response_pairs(
    record: Any, page_url: str | None, max_page_bytes: int, counts: Counter[str]
) -> list[tuple[str, str]]:
    ctype = record.http_headers.get_header("Content-Type") or ""
    if not ctype.lower().startswith(_HTML_TYPES) or not page_url:
        counts["warc_responses_not_html"] += 1
        return []
    body = record.content_stream().read(max_page_bytes + 1)
    if len(body) > max_page_bytes:
        counts["warc_responses_too_large"] += 1
        return []
    text, had_errors = decode_html(body, ctype)
    counts["warc_responses_decode_errors"] += had_errors
    try:
        return extract_page(text, page_url).pairs
    except PageParseError:
        counts["warc_responses_parse_error"] += 1
        return []
