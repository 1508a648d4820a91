"""A response body read up to a byte cap on its *decoded* size.

The crawler's session does not let aiohttp decompress: it offers only ``gzip`` and
``deflate`` and inflates here, never more than the cap allows at a time, so a page that
inflates to gigabytes (a gzip bomb) is cut at the cap instead of being held whole. Older
aiohttp releases (the dependency range allows 3.9) inflate each network read whole; this does
not depend on the release.
"""

from __future__ import annotations

import zlib

import aiohttp

ACCEPT_ENCODING = "gzip, deflate"
"""The only content codings the crawler offers (and can inflate with a cap)."""
_CHUNK = 64 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


class BodyError(Exception):
    """A body that cannot be decoded: ``reason`` is the counted failure, ``detail`` why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class _Inflater:
    """Decodes one body in pieces, each piece at most a given number of bytes."""

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._wbits: int | None
        if coding in ("gzip", "x-gzip"):
            self._wbits = 16 + zlib.MAX_WBITS
        elif coding == "deflate":
            self._wbits = None  # zlib-wrapped or raw: decided by the first byte
        else:
            raise BodyError("unsupported_encoding", f"Content-Encoding: {coding}")
        self._obj: zlib._Decompress | None = None

    def feed(self, data: bytes, max_out: int) -> bytes:
        """Decode ``data``; stops once ``max_out`` bytes are produced (the caller's cap is
        then exceeded, and the rest of the input is never inflated)."""
        out = b""
        try:
            while data and len(out) < max_out:
                if self._obj is None:
                    self._obj = zlib.decompressobj(self._first_wbits(data))
                out += self._obj.decompress(data, max_out - len(out))
                data = self._obj.unconsumed_tail
                if self._obj.eof:
                    # Concatenated gzip members are one body; anything else after the end is
                    # padding.
                    rest = self._obj.unused_data
                    data = rest if self._wbits and rest.startswith(_GZIP_MAGIC) else b""
                    self._obj = None
        except zlib.error as e:
            raise BodyError("bad_encoding", f"Content-Encoding {self._coding}: {e}") from e
        return out

    def _first_wbits(self, data: bytes) -> int:
        if self._wbits is not None:
            return self._wbits
        # RFC 1950's header says "deflate" in its low nibble; servers often send raw deflate.
        return zlib.MAX_WBITS if data[0] & 0x0F == 8 else -zlib.MAX_WBITS


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The decoded body of ``resp``, or None when it (or its encoded form) is over ``limit``
    bytes. Raises BodyError for a coding the crawler did not offer or corrupt data."""
    if resp.content_length is not None and resp.content_length > limit:
        return None
    coding = resp.headers.get("Content-Encoding", "").strip().lower()
    inflater = None if coding in ("", "identity") else _Inflater(coding)
    chunks, size, raw = [], 0, 0
    async for chunk in resp.content.iter_chunked(_CHUNK):
        raw += len(chunk)
        if inflater is not None:
            chunk = inflater.feed(chunk, limit - size + 1)
        size += len(chunk)
        if size > limit or raw > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
