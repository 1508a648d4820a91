"""img2dataset's per-image fetch, with the guards a web-scale download needs and it lacks.

img2dataset's ``download_image`` gives a socket timeout (a server that dribbles one byte a
second never trips it), decodes any image however many pixels it claims, and follows
redirects anywhere. ``guarded_download_image`` keeps its contract and output, and adds:

- a total deadline per image, connect to last byte (``download.timeout``);
- a byte cap, a decoded-pixel cap read from the image header before any decoding, and
  refusal of empty and cut-short (truncated) JPEG / PNG bodies;
- the SSRF guard (``tasks.core.safe_http.check_url``) on the URL and on every redirect hop.

``GuardedDownloader`` carries the policy to img2dataset's worker processes (it is pickled
with the downloader, so it works under the multiprocessing, pyspark and ray distributors).
"""

from __future__ import annotations

import functools
import io
import os
import struct
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset's import would phone home

from img2dataset import downloader as i2d_downloader  # noqa: E402
from img2dataset import logger as i2d_logger  # noqa: E402
from PIL import Image  # noqa: E402

from tasks.core.safe_http import check_url
from tasks.download.process_tree import die_with_parent

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class FetchPolicy:
    deadline_s: float
    max_bytes: int
    max_pixels: int
    allow_private_networks: bool


class FetchRefused(Exception):
    """A fetch stopped by a guard; the message starts with the failure reason."""


class _GuardedRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        reason = check_url(newurl, self.policy.allow_private_networks)
        if reason is not None:
            raise FetchRefused(f"{reason}: redirect to {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@functools.cache
def _opener(policy: FetchPolicy) -> urllib.request.OpenerDirector:
    """One opener per policy and process: building one costs ~0.5 ms, more than a fetch from
    a fast server. Openers are stateless across requests, so threads share it."""
    return urllib.request.build_opener(_GuardedRedirects(policy))


def _read_with_deadline(response: Any, policy: FetchPolicy, deadline: float) -> bytes:
    buf = io.BytesIO()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchRefused(f"deadline_exceeded: no complete image after {policy.deadline_s}s")
        sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
        if sock is not None:
            sock.settimeout(max(0.05, min(remaining, policy.deadline_s)))
        try:
            chunk = response.read1(_CHUNK) if hasattr(response, "read1") else response.read(_CHUNK)
        except TimeoutError:
            if time.monotonic() >= deadline - 0.1:
                raise FetchRefused(
                    f"deadline_exceeded: no complete image after {policy.deadline_s}s"
                ) from None
            raise
        if not chunk:
            return buf.getvalue()
        buf.write(chunk)
        if buf.tell() > policy.max_bytes:
            raise FetchRefused(f"too_large: more than {policy.max_bytes} bytes")


def check_image(data: bytes, max_pixels: int) -> None:
    """Refuse, without decoding: an empty body, a JPEG or PNG cut short (no end marker), and
    an image whose header declares more than ``max_pixels``."""
    if not data:
        raise FetchRefused("empty: 0 bytes")
    if data.startswith(b"\xff\xd8") and not data.rstrip(b"\0\r\n").endswith(b"\xff\xd9"):
        raise FetchRefused(f"truncated: JPEG of {len(data)} bytes has no end-of-image marker")
    if data.startswith(b"\x89PNG") and b"IEND" not in data[-64:]:
        raise FetchRefused(f"truncated: PNG of {len(data)} bytes has no IEND chunk")
    size = png_or_gif_size(data)
    if size is None:
        try:
            with Image.open(io.BytesIO(data)) as img:
                size = img.size
        except Image.DecompressionBombError as e:
            raise FetchRefused(f"too_many_pixels: {e}") from e
        except Exception:
            return  # not an image PIL can read: the resizer reports it as a decode failure
    width, height = size
    if width * height > max_pixels:
        raise FetchRefused(
            f"too_many_pixels: {width}x{height} = {width * height} px exceeds {max_pixels}"
        )


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
        reason = check_url(url, policy.allow_private_networks)
        if reason is not None:
            raise FetchRefused(f"{reason}: {url}")
        request = urllib.request.Request(url, headers={"User-Agent": agent})
        with _opener(policy).open(request, timeout=min(timeout, policy.deadline_s)) as response:
            if disallowed_header_directives and i2d_downloader.is_disallowed(
                response.headers, user_agent_token, disallowed_header_directives
            ):
                return key, None, "Use of image disallowed by X-Robots-Tag directive"
            data = _read_with_deadline(response, policy, deadline)
        check_image(data, policy.max_pixels)
        return key, io.BytesIO(data), None
    except TimeoutError as err:
        return key, None, f"timeout: {err}"
    except Exception as err:
        return key, None, str(err)


class MortalLoggerProcess(i2d_logger.LoggerProcess):
    """img2dataset's logger process, which exits when the process that started it dies."""

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

    def __call__(self, row: Any) -> Any:
        die_with_parent()  # a worker must not finish its shard after the stage died
        policy: FetchPolicy = self.instance_policy

        def fetch(row, timeout, user_agent_token, disallowed_header_directives):
            return guarded_download_image(
                row, timeout, user_agent_token, disallowed_header_directives, policy
            )

        # download_image_with_retry looks the fetch up in its module at call time.
        i2d_downloader.download_image = fetch
        return super().__call__(row)
