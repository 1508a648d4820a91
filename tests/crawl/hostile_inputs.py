"""Hostile crawl inputs built cheaply in tests: gzip bombs, a page of 200k links, a WAT file
with a record that inflates to a gigabyte, and a loopback server for fixed responses."""

from __future__ import annotations

import contextlib
import io
import json
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from warcio.warcwriter import WARCWriter

_MIB = 1 << 20


def gzip_bomb(prefix: bytes, filler: bytes, repeats: int, suffix: bytes = b"") -> bytes:
    """One gzip member of ``prefix + filler * repeats + suffix``, built without compressing
    the repeats: after a full flush the deflate output of one ``filler`` is the same every
    time, so it is compressed once and repeated. (A gigabyte of zeros costs ~1 s, not ~8.)"""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = deflate.compress(prefix) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(filler) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.compress(suffix) + deflate.flush()
    crc = zlib.crc32(prefix)
    for _ in range(repeats):
        crc = zlib.crc32(filler, crc)
    crc = zlib.crc32(suffix, crc)
    size = len(prefix) + len(filler) * repeats + len(suffix)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)
    return header + head + block * repeats + tail + trailer


def links_page(n_links: int, n_images: int = 0, first: int = 0) -> bytes:
    """An HTML page with ``n_links`` distinct same-site links (``/?p=N`` from ``first``) and
    ``n_images`` images (~25 bytes per link: 200k links is ~5 MB)."""
    links = "".join(f'<a href="/?p={i}">{i}</a>' for i in range(first, first + n_links))
    images = "".join(f'<img src="/i/{i}.png" alt="image {i}">' for i in range(n_images))
    return f"<html><body>{images}{links}</body></html>".encode()


def wat_metadata_json(page: str, images: list[str]) -> bytes:
    links = [{"path": "IMG@/src", "url": url, "alt": f"alt of {url}"} for url in images]
    meta = {"HTTP-Response-Metadata": {"HTML-Metadata": {"Head": {}, "Links": links}}}
    envelope = {"WARC-Header-Metadata": {"WARC-Target-URI": page}, "Payload-Metadata": meta}
    return json.dumps({"Envelope": envelope}).encode()


def metadata_record(uri: str, payload: bytes) -> bytes:
    """One uncompressed WARC metadata record (application/json) around ``payload``."""
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=False)
    record = writer.create_warc_record(
        uri, "metadata", payload=io.BytesIO(payload), warc_content_type="application/json",
        warc_headers_dict={"WARC-Date": "2024-03-01T12:30:00Z"},
    )  # fmt: skip
    writer.write_record(record)
    return out.getvalue()


def write_wat_with_huge_record(path: Path, record_mib: int) -> None:
    """A gzip WAT file: a good record, one whose JSON payload inflates to ``record_mib`` MiB
    (a string of spaces inside valid JSON), and another good record; one gzip member each."""
    good_a = metadata_record(
        "http://a.example/", wat_metadata_json("http://a.example/", ["http://a.example/1.png"])
    )
    good_b = metadata_record(
        "http://b.example/", wat_metadata_json("http://b.example/", ["http://b.example/2.png"])
    )
    prefix, suffix = b'{"Envelope": {"padding": "', b'"}}'
    size = len(prefix) + record_mib * _MIB + len(suffix)
    header = (
        "WARC/1.0\r\nWARC-Type: metadata\r\nWARC-Target-URI: http://huge.example/\r\n"
        "WARC-Date: 2024-03-01T12:30:00Z\r\nWARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-"
        "000000000001>\r\nContent-Type: application/json\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    huge = gzip_bomb(header + prefix, b" " * _MIB, record_mib, suffix + b"\r\n\r\n")
    with open(path, "wb") as fh:
        fh.write(zlib.compress(good_a, wbits=31))
        fh.write(huge)
        fh.write(zlib.compress(good_b, wbits=31))


Response = tuple[int, dict[str, str], bytes]
Route = Response | Callable[[str], Response]
"""A fixed response, or one made from the request's query string."""


class _FixedHandler(BaseHTTPRequestHandler):
    server: _FixedServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        parts = urlsplit(self.path)
        routes = self.server.routes
        route = routes.get(parts.path + "?" * bool(parts.query)) or routes.get(
            parts.path, (404, {}, b"")
        )
        status, headers, body = route(parts.query) if callable(route) else route
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        # The client may stop reading: a cap working as intended.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)


class _FixedServer(ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[str, Route]


@contextmanager
def serve_fixed(routes: dict[str, Route]) -> Iterator[str]:
    """Serve ``routes`` on 127.0.0.1; yields the origin. A route key ending in ``?``
    answers every query on that path (``/?`` serves ``/?p=1``, ``/?p=2``...)."""
    server = _FixedServer(("127.0.0.1", 0), _FixedHandler)
    server.routes = routes
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def write_wat_with_endless_header(path: Path, line_mib: int) -> None:
    """A gzip WAT file: a good record, then a record whose WARC-Target-URI header is one line
    of ``line_mib`` MiB (one gzip member)."""
    good = metadata_record(
        "http://a.example/", wat_metadata_json("http://a.example/", ["http://a.example/1.png"])
    )
    head = b"WARC/1.0\r\nWARC-Type: metadata\r\nWARC-Target-URI: http://huge.example/"
    tail = b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}\r\n\r\n"
    with open(path, "wb") as fh:
        fh.write(zlib.compress(good, wbits=31))
        fh.write(gzip_bomb(head, b"a" * _MIB, line_mib, tail))
