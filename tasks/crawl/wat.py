"""Common Crawl input: image-alt pairs from WAT files (the metadata LAION used) and from WARC
files (raw HTML responses, run through the same extractor as the site crawler).

One reader takes both: each record is classified by its type, so a file may even mix them.
WAT ``metadata`` records carry JSON whose ``HTML-Metadata.Links`` list holds one entry per
``<img>`` (``"path": "IMG@/src"``) with its ``alt``; WARC ``response`` records carry the page.

A hostile or broken file costs bounded memory: a record's headers are read only up to
``max_record_bytes`` (past it the file is refused: its framing is lost), its payload only up
to its cap (``max_record_bytes`` for WAT JSON, ``max_page_bytes`` for a WARC page), so a gzip
member that inflates to a gigabyte is never held whole. A WAT record that is too large, not
UTF-8, not JSON, or JSON of the wrong shape is counted and reported under its own reason (``wat_record_too_large``, ``bad_wat_utf8``, ``bad_wat_json``,
``bad_wat_shape``; counted as ``wat_records_too_large``, ``wat_records_bad_utf8``...) and
skipped: ``wat_records == wat_records_read + wat_records_failed``.
"""

from __future__ import annotations

import functools
import json
import logging
import posixpath
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import fsspec
from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed

from tasks.core.config import CrawlConfig
from tasks.crawl.candidates import CandidateSink
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


class MalformedRecord(ValueError):
    """A WAT record that cannot be used: ``kind`` is one of REPORTED_AS."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


REPORTED_AS = {
    "too_large": "wat_record_too_large",
    "bad_utf8": "bad_wat_utf8",
    "bad_json": "bad_wat_json",
    "bad_shape": "bad_wat_shape",
}
"""The reason in errors.parquet for each kind of unusable WAT record."""


@dataclass
class ArchiveResult:
    """Pairs as (url, caption, page_url, crawl_time, source), record counts, and the
    records that gave nothing for a reason worth reporting. It is the reader's
    CandidateSink unless it is handed another one; then ``pairs`` and ``errors`` stay empty."""

    pairs: list[tuple[str, str, str, datetime, str]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[dict[str, str]] = field(default_factory=list)

    def add_pairs(
        self, pairs: Iterable[tuple[str, str]], page_url: str, when: datetime, source: str
    ) -> None:
        self.pairs.extend((url, caption, page_url, when, source) for url, caption in pairs)

    def add_error(self, error: dict[str, str]) -> None:
        self.errors.append(error)


@dataclass
class WatRecord:
    """What one WAT record gives: its page, (image url, alt) pairs, and image links counted
    but not taken (no usable http(s) URL; past the per-page image cap)."""

    page_url: str | None
    pairs: list[tuple[str, str]]
    unusable: int = 0
    over_cap: int = 0


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


def wat_pairs(payload: Any, max_images: int | None = None) -> WatRecord:
    """The page URL and its (image url, alt) pairs (at most ``max_images``) from one parsed
    WAT JSON record. MalformedRecord (``bad_wat_shape``) when a field has the wrong type."""
    if not isinstance(payload, dict):
        raise MalformedRecord("bad_shape", f"record is {_kind(payload)}, not an object")
    envelope = _field(payload, "Envelope", dict)
    page_url = _field(_field(envelope, "WARC-Header-Metadata", dict), "WARC-Target-URI", str)
    http_meta = _field(_field(envelope, "Payload-Metadata", dict), "HTTP-Response-Metadata", dict)
    html_meta = _field(http_meta, "HTML-Metadata", dict)
    base = _field(_field(html_meta, "Head", dict), "Base", str) or page_url
    record = WatRecord(page_url or None, [])
    for i, link in enumerate(_field(html_meta, "Links", list)):
        if not isinstance(link, dict):
            raise MalformedRecord("bad_shape", f"Links[{i}] is {_kind(link)}, not an object")
        if link.get("path") != _IMG_PATH:
            continue
        if max_images is not None and len(record.pairs) >= max_images:
            record.over_cap += 1
            continue
        url = normalize_url(_field(link, "url", str), base or None)
        if url is None:
            record.unusable += 1
        else:
            record.pairs.append((url, clean_text(_field(link, "alt", str))))
    return record


_EMPTY: dict[type, Any] = {dict: {}, list: [], str: ""}


def _field(obj: dict[str, Any], key: str, kind: type) -> Any:
    """``obj[key]`` when it is a ``kind``; the empty ``kind`` when absent or null;
    MalformedRecord when it is something else (``"Links": 5``)."""
    value = obj.get(key)
    if value is None:
        return _EMPTY[kind]
    if not isinstance(value, kind):
        raise MalformedRecord("bad_shape", f"{key} is {_kind(value)}, not {_kind(_EMPTY[kind])}")
    return value


def _kind(value: Any) -> str:
    names: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    return names.get(type(value), type(value).__name__)


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
    cfg: CrawlConfig | None = None,
    sink: CandidateSink | None = None,
) -> ArchiveResult:
    """All image-text pairs in one WAT or WARC file (gzip or plain; a local path, any fsspec
    URI, or http(s)), handed to ``sink`` as they are read (by default the result's lists).
    From ``cfg``: the byte caps, the per-page image cap, and ``timeout`` for each network
    read, in seconds."""
    cfg = cfg or CrawlConfig()
    result = ArchiveResult()
    reader = _RecordReader(uri, cfg, sink or result, result.counts)
    with _open(uri, storage_options or {}, cfg.timeout) as stream:
        try:
            for record in _records(stream, uri, cfg.max_record_bytes):
                reader.read(record)
        except (ArchiveLoadFailed, OSError, EOFError, ValueError) as e:
            if isinstance(e, ArchiveInputError):
                raise
            raise ArchiveInputError(
                f"crawl.wat_files: {uri} is not a readable WARC/WAT archive "
                f"(after {result.counts['records']} records): {e}"
            ) from e
    return result


class _HeaderBudget:
    """warcio's ``readline``, which reads every header line (WARC and HTTP) and the blank
    lines between records, held to ``limit`` bytes per record: warcio keeps whole lines and
    every header, so a gzip member inflating to one endless line is stopped at the cap.
    Headers are the record's framing; past the cap the file cannot be read on, so it is
    refused (ArchiveInputError), as any unreadable archive is."""

    def __init__(self, readline: Callable[..., bytes], limit: int, uri: str) -> None:
        self._readline, self._limit, self._uri = readline, limit, uri
        self.used = 0

    def __call__(self, length: int | None = None) -> bytes:
        room = self._limit - self.used + 1
        line = self._readline(room if length is None else min(length, room))
        self.used += len(line)
        if self.used > self._limit:
            raise ArchiveInputError(
                f"crawl.wat_files: {self._uri}: record headers over {self._limit} bytes"
            )
        return line


def _records(stream: IO[bytes], uri: str, header_limit: int) -> Iterator[Any]:
    first = True
    iterator = ArchiveIterator(stream)
    budget = _HeaderBudget(iterator.reader.readline, header_limit, uri)
    iterator.reader.readline = budget
    for record in iterator:
        # warcio reads any line of text as an old-style ARC header; Common Crawl is WARC.
        if record.format != "warc":
            raise ArchiveInputError(f"crawl.wat_files: {uri} is not a WARC/WAT archive")
        first = False
        yield record
        budget.used = 0  # the next record's headers are read from here on
    if first:
        raise ArchiveInputError(f"crawl.wat_files: {uri} holds no WARC records")


class _RecordReader:
    """Reads records of one archive into a sink, counting each one."""

    def __init__(self, uri: str, cfg: CrawlConfig, sink: CandidateSink, counts: Counter[str]):
        self.uri, self.cfg, self.sink, self.counts = uri, cfg, sink, counts
        self.name = posixpath.basename(uri.rstrip("/"))

    def read(self, record: Any) -> None:
        counts = self.counts
        counts["records"] += 1
        headers = record.rec_headers
        ctype = (headers.get_header("Content-Type") or "").lower()
        if record.rec_type == "metadata" and ctype.startswith("application/json"):
            counts["wat_records"] += 1
            try:
                wat = self._wat_record(record)
            except MalformedRecord as e:
                self._failed(headers.get_header("WARC-Target-URI") or "", e.kind, str(e))
                return
            counts["wat_records_read"] += 1
            counts["wat_images_unusable_url"] += wat.unusable
            counts["images_skipped_page_cap"] += wat.over_cap
            page_url, pairs, source = wat.page_url, wat.pairs, f"wat:{self.name}"
        elif record.rec_type == "response" and record.http_headers is not None:
            counts["warc_responses"] += 1
            page_url = headers.get_header("WARC-Target-URI")
            pairs = _warc_response_pairs(record, page_url, self.cfg, counts)
            source = f"warc:{self.name}"
        else:
            counts["records_other"] += 1
            return
        when = _warc_date(headers.get_header("WARC-Date"))
        counts[f"pairs_found_{source.split(':')[0]}"] += len(pairs)
        self.sink.add_pairs(pairs, page_url or "", when, source)

    def _wat_record(self, record: Any) -> WatRecord:
        """The WAT JSON of one record, read no further than ``max_record_bytes``."""
        limit = self.cfg.max_record_bytes
        body = record.content_stream().read(limit + 1)
        if len(body) > limit:
            raise MalformedRecord("too_large", f"payload over {limit} bytes")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedRecord("bad_utf8", str(e)) from e
        try:
            payload = json.loads(text)
        except ValueError as e:
            raise MalformedRecord("bad_json", str(e)) from e
        except RecursionError as e:  # [[[[...]]]] nested past the interpreter's limit
            raise MalformedRecord("bad_json", "nested too deeply") from e
        return wat_pairs(payload, self.cfg.max_images_per_page)

    def _failed(self, url: str, kind: str, detail: str) -> None:
        self.counts["wat_records_failed"] += 1
        self.counts[f"wat_records_{kind}"] += 1
        reason = REPORTED_AS[kind]
        self.sink.add_error({"url": url, "reason": reason, "detail": detail, "source": self.uri})


def _warc_response_pairs(
    record: Any, page_url: str | None, cfg: CrawlConfig, counts: Counter[str]
) -> list[tuple[str, str]]:
    ctype = record.http_headers.get_header("Content-Type") or ""
    if not ctype.lower().startswith(_HTML_TYPES) or not page_url:
        counts["warc_responses_not_html"] += 1
        return []
    body = record.content_stream().read(cfg.max_page_bytes + 1)
    if len(body) > cfg.max_page_bytes:
        counts["warc_responses_too_large"] += 1
        return []
    text, had_errors = decode_html(body, ctype)
    counts["warc_responses_decode_errors"] += had_errors
    try:
        page = extract_page(text, page_url, max_images=cfg.max_images_per_page)
    except PageParseError:
        counts["warc_responses_parse_error"] += 1
        return []
    counts["images_skipped_page_cap"] += page.skipped_images["page_cap"]
    return page.pairs
