"""Images read straight from WebDataset tars by byte offset: a tar's headers are walked once
(cached per tar), then each image is one range read (a local seek, an S3 Range GET). Nothing
is extracted to disk; large images are scaled down in memory."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

import fsspec
from PIL import Image

from model.tario import image_extension, member_index
from tasks.core.storage import Storage

TarIndex = dict[str, dict[str, tuple[int, int]]]
"""key -> extension -> (data offset, size)."""


class TarImages:
    """Sample images from tars (under the storage root, or an evaluation dataset's local or
    S3 folder), with an LRU cache of tar indexes."""

    def __init__(self, storage: Storage, thumbnail_px: int, cached_tars: int = 256) -> None:
        self.storage = storage
        self._local = fsspec.filesystem("file")
        self.thumbnail_px = thumbnail_px
        self._cached_tars = cached_tars
        self._indexes: OrderedDict[str, TarIndex] = OrderedDict()
        self._lock = threading.Lock()

    def index(self, tar_uri: str) -> TarIndex:
        """The member offsets of one tar (walked on first use; headers only)."""
        with self._lock:
            if tar_uri in self._indexes:
                self._indexes.move_to_end(tar_uri)
                return self._indexes[tar_uri]
        with self._fs(tar_uri).open(tar_uri, "rb") as fh:
            index = member_index(fh, tar_uri)
        with self._lock:
            self._indexes[tar_uri] = index
            while len(self._indexes) > self._cached_tars:
                self._indexes.popitem(last=False)
        return index

    def _fs(self, uri: str) -> fsspec.AbstractFileSystem:
        return self.storage.fs if uri.startswith("s3://") else self._local

    def read_range(self, uri: str, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset``: a seek locally, one Range GET on S3."""
        return bytes(self._fs(uri).cat_file(uri, start=offset, end=offset + size))

    def image(self, tar_uri: str, key: str) -> bytes | None:
        """The bytes of sample ``key``'s image member, or None if the tar has none."""
        members = self.index(tar_uri).get(key)
        ext = image_extension(members) if members else None
        if members is None or ext is None:
            return None
        offset, size = members[ext]
        return self.read_range(tar_uri, offset, size)

    def thumbnail(self, data: bytes) -> tuple[bytes, str]:
        """(bytes, media type): the image as it is when small, else scaled down to fit
        ``thumbnail_px`` and re-encoded as PNG. Only decoded images are ever sent."""
        with Image.open(io.BytesIO(data)) as image:
            if max(image.size) <= self.thumbnail_px and image.format in ("PNG", "JPEG", "WEBP"):
                return data, Image.MIME[image.format]
            image.thumbnail((self.thumbnail_px, self.thumbnail_px))
            out = io.BytesIO()
            image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB").save(out, "PNG")
        return out.getvalue(), "image/png"
