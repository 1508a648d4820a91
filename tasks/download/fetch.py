"""img2dataset's per-image fetch, with the guards a web-scale download needs and it lacks.

img2dataset's ``download_image`` gives a socket timeout (a server that dribbles one byte a
second never trips it), decodes any image however many pixels it claims, and follows
redirects anywhere. ``guarded_download_image`` keeps its contract and output, and adds:

- one deadline per image covering DNS, connect, headers, body and every redirect hop
  (``download.timeout``), and connections pinned to the addresses the SSRF guard checked,
  on every hop (``tasks.download.pinned_http``);
- a byte cap, refusal of empty and cut-short (truncated) JPEG / PNG bodies, and a
  decoded-pixel cap that fails closed: only formats whose size is read from the header
  before any decoding are accepted (``HEADER_SIZED_FORMATS``); anything else is refused as
  ``unsupported_format`` before OpenCV, which decodes many more formats, can see it.

``GuardedDownloader`` carries the policy to img2dataset's worker processes (it is pickled
with the downloader, so it works under the multiprocessing, pyspark and ray distributors).
``opencv_pixel_limit`` sets OpenCV's own decode cap for the processes img2dataset spawns.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset's import would phone home

from img2dataset import downloader as i2d_downloader  # noqa: E402
from img2dataset import logger as i2d_logger  # noqa: E402
from PIL import Image  # noqa: E402

from tasks.download import pinned_http  # noqa: E402
from tasks.download.pinned_http import Destination, FetchRefused  # noqa: E402
from tasks.download.process_tree import (  # noqa: E402
    WORKER_CONTEXT,
    WORKER_START_METHOD,
    die_with_parent,
    killed_with_parent,
)

HEADER_SIZED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
"""Formats whose pixel size Pillow reads from the header without decoding, and OpenCV
decodes; anything else (Radiance HDR, PNM, JPEG 2000, OpenEXR, ...) is refused."""

OPENCV_PIXEL_LIMIT_ENV = "OPENCV_IO_MAX_IMAGE_PIXELS"

Image.init()  # register every plugin, so that Image.open(formats=...) knows each name


@dataclass(frozen=True)
class FetchPolicy:
    deadline_s: float
    max_bytes: int
    max_pixels: int
    allow_private_networks: bool
    allow_private_hosts: tuple[str, ...] = ()
    """"host:port" or "address:port" entries reachable though private."""
    max_redirects: int = 10
    blocked_domains: tuple[str, ...] = ()
    """``curate.url_blocklist``: hosts never fetched, on any redirect hop either."""

    @property
    def destination(self) -> Destination:
        return Destination(
            self.allow_private_networks,
            frozenset(self.allow_private_hosts),
            frozenset(self.blocked_domains),
        )


def check_image(data: bytes, max_pixels: int) -> None:
    """Refuse, without decoding: an empty body, a JPEG or PNG cut short (no end marker), a
    format whose size is not read from its header, and an image whose header declares more
    than ``max_pixels``."""
    if not data:
        raise FetchRefused("empty", "0 bytes")
    if data.startswith(b"\xff\xd8") and not data.rstrip(b"\0\r\n").endswith(b"\xff\xd9"):
        raise FetchRefused("truncated", f"JPEG of {len(data)} bytes has no end-of-image marker")
    if data.startswith(b"\x89PNG") and b"IEND" not in data[-64:]:
        raise FetchRefused("truncated", f"PNG of {len(data)} bytes has no IEND chunk")
    size = png_or_gif_size(data)
    if size is None:
        size = _header_size(data)
    width, height = size
    if width * height > max_pixels:
        raise FetchRefused(
            "too_many_pixels", f"{width}x{height} = {width * height} px exceeds {max_pixels}"
        )


def _header_size(data: bytes) -> tuple[int, int]:
    """The size Pillow reads from the header of an allowed format (it decodes nothing)."""
    try:
        with Image.open(io.BytesIO(data), formats=HEADER_SIZED_FORMATS) as img:
            return img.size
    except Image.DecompressionBombError as e:
        raise FetchRefused("too_many_pixels", str(e)) from e
    except Exception as e:
        kind = other_image_format(data)
        if kind is None:
            raise FetchRefused("not_an_image", f"{_shown_start(data)}: no image header") from e
        raise FetchRefused(
            "unsupported_format", f"{kind}: only {', '.join(HEADER_SIZED_FORMATS)} are accepted"
        ) from e


# Image formats OpenCV (or another decoder) reads that are refused: (magic prefix, name).
_OTHER_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"#?RADIANCE", "Radiance HDR"), (b"#?RGBE", "Radiance HDR"),
    (b"v/1\x01", "OpenEXR"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"), (b"\x59\xa6\x6a\x95", "Sun raster"),
    (b"8BPS", "Photoshop"), (b"\x00\x00\x01\x00", "ICO"), (b"DDS ", "DDS"),
    (b"qoif", "QOI"), (b"\x80\x2a\x5f\xd7", "Cineon"), (b"SDPX", "DPX"), (b"XPDS", "DPX"),
)  # fmt: skip


def other_image_format(data: bytes) -> str | None:
    """The name of a recognised image format outside HEADER_SIZED_FORMATS, or None."""
    for magic, name in _OTHER_IMAGE_MAGIC:
        if data.startswith(magic):
            return name
    if len(data) > 2 and data[0:1] == b"P" and data[1:2] in b"1234567" and data[2:3].isspace():
        return "PNM"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1"):
        return "AVIF/HEIF"
    return None


def _shown_start(data: bytes) -> str:
    printable = "".join(chr(b) if 32 <= b < 127 else "." for b in data[:12])
    return f"body starts {printable!r}"


def png_or_gif_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG IHDR chunk or a GIF screen descriptor, at fixed offsets:
    ~1 us against ~30 us for PIL's format probing, on the most common small images."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return width, height
    return None


@contextmanager
def opencv_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Set OpenCV's decode cap for the processes started inside this block (OpenCV reads
    it once, when it is imported, so it must be in the environment of a new process)."""
    saved = os.environ.get(OPENCV_PIXEL_LIMIT_ENV)
    os.environ[OPENCV_PIXEL_LIMIT_ENV] = str(max_pixels)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(OPENCV_PIXEL_LIMIT_ENV, None)
        else:
            os.environ[OPENCV_PIXEL_LIMIT_ENV] = saved


def guarded_download_image(
    row: tuple[int, str],
    timeout: float,
    user_agent_token: str | None,
    disallowed_header_directives: set[str] | None,
    policy: FetchPolicy,
) -> tuple[int, io.BytesIO | None, str | None]:
    """img2dataset's ``download_image`` contract: ``(key, stream | None, error | None)``."""
    key, url = row
    deadline = time.monotonic() + policy.deadline_s
    agent = "Mozilla/5.0 (X11; Linux x86_64) clipflow"
    if user_agent_token:
        agent += f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"
    try:
        with pinned_http.get(
            url,
            policy.destination,
            deadline,
            {"User-Agent": agent},
            io_timeout=min(timeout, policy.deadline_s),
            max_redirects=policy.max_redirects,
        ) as response:
            if disallowed_header_directives and i2d_downloader.is_disallowed(
                response.headers, user_agent_token, disallowed_header_directives
            ):
                return key, None, "Use of image disallowed by X-Robots-Tag directive"
            data = response.read_capped(policy.max_bytes)
        check_image(data, policy.max_pixels)
        return key, io.BytesIO(data), None
    except TimeoutError as err:
        return key, None, f"timeout: {err}"
    except Exception as err:
        return key, None, str(err) or type(err).__name__


class MortalLoggerProcess(i2d_logger.LoggerProcess):
    """img2dataset's logger process, which exits when the process that started it dies;
    forked (``WORKER_START_METHOD``), where img2dataset's class spawns."""

    _start_method = WORKER_START_METHOD
    _Popen = staticmethod(WORKER_CONTEXT.Process._Popen)

    def run(self) -> None:
        die_with_parent()
        super().run()


class GuardedDownloader(i2d_downloader.Downloader):
    """img2dataset's Downloader, fetching with ``guarded_download_image`` under ``policy``."""

    policy: FetchPolicy | None = None  # set on the class by the parent before img2dataset runs

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        policy = type(self).policy
        if policy is None:
            raise RuntimeError("GuardedDownloader.policy must be set before img2dataset runs")
        self.instance_policy: FetchPolicy = policy  # pickled with the instance into workers
        # img2dataset's own process, which engine workers on this machine must not outlive.
        self.driver = (socket.gethostname(), os.getpid())

    def __call__(self, row: Any) -> Any:
        policy: FetchPolicy = self.instance_policy

        def fetch(row, timeout, user_agent_token, disallowed_header_directives):
            return guarded_download_image(
                row, timeout, user_agent_token, disallowed_header_directives, policy
            )

        # download_image_with_retry looks the fetch up in its module at call time.
        i2d_downloader.download_image = fetch
        host, pid = self.driver
        ancestor = pid if host == socket.gethostname() and pid != os.getppid() else None
        # A worker must not write its shard after the stage died.
        with killed_with_parent(ancestor):
            return super().__call__(row)
