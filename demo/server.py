"""Serve a built demo web on 127.0.0.1: its static files plus the hostile routes.

The hostile routes misbehave on purpose (stall, drip one byte a second, loop redirects, fail
with 404/500, stream an endless page, send an opt-out header) so the crawler and downloader
tests meet them against a real server. ``__ORIGIN__`` in served HTML becomes the server's own
origin, which gives the static pages real absolute links.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

STALL_SECONDS = 120.0
"""How long a stalling route holds its connection before giving up (longer than any timeout)."""
DRIP_INTERVAL = 1.0
HUGE_PAGE_BYTES = 8 * 1024 * 1024

# Dynamic routes, by what they do. The static hostile files (not-an-image.jpg, truncated.jpg,
# empty.jpg, bomb.png) are written by the builder; these need code.
HOSTILE_IMAGE_ROUTES: dict[str, str] = {
    "http_404": "/hostile/missing.jpg",
    "http_500": "/hostile/error-500.jpg",
    "slow_drip": "/hostile/slow-drip.jpg",
    "stall": "/hostile/stall.jpg",
    "redirect_loop": "/hostile/loop-a.jpg",
    "redirect_to_image": "/hostile/redirect-to-image.jpg",
    "x_robots_noai": "/hostile/noai.png",
}
HOSTILE_PAGE_ROUTES: dict[str, str] = {
    "http_404": "/hostile/missing.html",
    "http_5xx": "/hostile/error-500.html",
    "timeout_stall": "/hostile/stall.html",
    "timeout_drip": "/hostile/slow-drip.html",
    "redirect_loop": "/hostile/loop-a.html",
    "too_large": "/hostile/huge.html",
    "redirect_to_page": "/hostile/moved.html",
}
SSRF_ROUTES: dict[str, str] = {
    "redirect_to_localhost": "/ssrf/redirect-localhost.html",
    "redirect_to_name": "/ssrf/redirect-named.html",
    "links_to_loopback": "/ssrf/links.html",
}
SSRF_TEST_NAME = "intranet.test"
"""The host name redirect-named.html points at; tests resolve it to 127.0.0.1 themselves."""
REDIRECT_IMAGE_TARGET = "/hostile/noai.png"
"""Where redirect-to-image.jpg points: a real PNG, served with its opt-out header (so a
downloader must check the headers of the final hop, not the first)."""
REDIRECT_PAGE_TARGET = "/planted/moved-target.html"
NOAI_SOURCE = "/img/fashion/00000.png"


class _Handler(SimpleHTTPRequestHandler):
    server: DemoHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        path = urlsplit(self.path).path
        self.server.count_request(path)
        route = _ROUTES.get(path)
        try:
            if route is not None:
                route(self)
            elif path.endswith((".html", "/")):
                self._send_html(path)
            else:
                super().do_GET()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout working as intended)

    def _send_html(self, path: str) -> None:
        local = Path(self.translate_path(path))
        if local.is_dir():
            local = local / "index.html"
        if not local.is_file():
            self.send_error(404, "Not Found")
            return
        body = local.read_bytes().replace(b"__ORIGIN__", self.server.origin.encode())
        self._send(200, "text/html; charset=utf-8", body)

    def _send(self, status: int, ctype: str, body: bytes, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str, status: int = 302) -> None:
        """Answer with a redirect to ``location`` (relative or absolute)."""
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def stall(self) -> None:
        """Accept the request and send nothing until the client or the server gives up."""
        self.server.closing.wait(STALL_SECONDS)
        self.close_connection = True

    def drip(self, ctype: str, body: bytes) -> None:
        """Send a valid response one byte per DRIP_INTERVAL, with an honest Content-Length."""
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for i in range(len(body)):
            if self.server.closing.wait(DRIP_INTERVAL):
                return
            self.wfile.write(body[i : i + 1])
            self.wfile.flush()

    def endless_page(self) -> None:
        """A page with no Content-Length that streams HUGE_PAGE_BYTES of markup."""
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        chunk = b"<p>" + b"padding " * 8000 + b"</p>\n"
        sent = 0
        while sent < HUGE_PAGE_BYTES and not self.server.closing.is_set():
            self.wfile.write(chunk)
            sent += len(chunk)
        self.close_connection = True

    def static_bytes(self, path: str) -> bytes:
        """The bytes of a file of the served site, by its URL path."""
        return Path(self.translate_path(path)).read_bytes()


def _noai(h: _Handler) -> None:
    h._send(200, "image/png", h.static_bytes(NOAI_SOURCE), X_Robots_Tag="noai, noimageai")


def _ssrf_links(h: _Handler) -> None:
    port = h.server.server_port
    body = (
        "<html><body><h1>links to loopback</h1>"
        f'<a href="http://localhost:{port}/">localhost</a>'
        f'<a href="http://127.0.0.2:{port}/">another loopback literal</a>'
        f'<a href="http://[::1]:{port}/">ipv6 loopback</a>'
        f'<img src="/img/fashion/00000.png" alt="an image on the links page">'
        "</body></html>"
    ).encode()
    h._send(200, "text/html; charset=utf-8", body)


_ROUTES: dict[str, Any] = {
    "/hostile/missing.jpg": lambda h: h.send_error(404, "Not Found"),
    "/hostile/missing.html": lambda h: h.send_error(404, "Not Found"),
    "/hostile/error-500.jpg": lambda h: h.send_error(500, "Internal Server Error"),
    "/hostile/error-500.html": lambda h: h.send_error(500, "Internal Server Error"),
    "/hostile/slow-drip.jpg": lambda h: h.drip("image/jpeg", h.static_bytes("/hostile/drip.jpg")),
    "/hostile/slow-drip.html": lambda h: h.drip("text/html", b"<html><body>" + b"." * 600),
    "/hostile/stall.jpg": _Handler.stall,
    "/hostile/stall.html": _Handler.stall,
    "/hostile/loop-a.jpg": lambda h: h.redirect("/hostile/loop-b.jpg"),
    "/hostile/loop-b.jpg": lambda h: h.redirect("loop-a.jpg"),
    "/hostile/loop-a.html": lambda h: h.redirect("/hostile/loop-b.html", 301),
    "/hostile/loop-b.html": lambda h: h.redirect(f"{h.server.origin}/hostile/loop-a.html"),
    "/hostile/redirect-to-image.jpg": lambda h: h.redirect(REDIRECT_IMAGE_TARGET),
    "/hostile/moved.html": lambda h: h.redirect(REDIRECT_PAGE_TARGET, 301),
    "/hostile/noai.png": _noai,
    "/hostile/huge.html": _Handler.endless_page,
    "/ssrf/redirect-localhost.html": lambda h: h.redirect(
        f"http://localhost:{h.server.server_port}/planted/moved-target.html"
    ),
    "/ssrf/redirect-named.html": lambda h: h.redirect(
        f"http://{SSRF_TEST_NAME}:{h.server.server_port}/planted/moved-target.html"
    ),
    "/ssrf/links.html": _ssrf_links,
}


class DemoHTTPServer(ThreadingHTTPServer):
    """A threaded server whose stalling handlers end promptly when it closes."""

    daemon_threads = True
    block_on_close = False
    # socketserver's default backlog of 5 drops connection bursts from a crawler or
    # img2dataset's thread pool; a dropped SYN costs a 1 s retransmit and looks like a timeout.
    request_queue_size = 256

    def __init__(self, site_dir: Path, host: str, port: int) -> None:
        self.site_dir = site_dir
        self.closing = threading.Event()
        self.requests: Counter[str] = Counter()
        """GET requests received, by path (tests check what was, or was not, fetched)."""
        self._requests_lock = threading.Lock()
        handler = _handler_for(site_dir)
        super().__init__((host, port), handler)
        bound_host = "127.0.0.1" if host in ("", "0.0.0.0") else host
        self.origin = f"http://{bound_host}:{self.server_port}"

    def count_request(self, path: str) -> None:
        with self._requests_lock:
            self.requests[path] += 1


def _handler_for(site_dir: Path) -> type[_Handler]:
    class Handler(_Handler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(site_dir), **kwargs)

    return Handler


class DemoWebServer:
    """A running demo web server: ``.url`` (no trailing slash), ``.site_dir``, ``.close()``,
    and ``.requests`` (a Counter of the paths it was asked for)."""

    def __init__(self, site_dir: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.site_dir = Path(site_dir)
        if not self.site_dir.is_dir():
            raise FileNotFoundError(f"demo web folder {self.site_dir} does not exist")
        self._httpd = DemoHTTPServer(self.site_dir, host, port)
        self.url = self._httpd.origin
        self.requests = self._httpd.requests
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=f"demo-web-{self.url}", daemon=True
        )
        self._thread.start()

    def wait(self) -> None:
        """Block until the server stops (``serve`` from the command line)."""
        self._thread.join()

    def close(self) -> None:
        """Stop serving; stalling and dripping handlers end at once."""
        self._httpd.closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> DemoWebServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def serve(site_dir: str | Path, host: str = "127.0.0.1", port: int = 0) -> DemoWebServer:
    """Start serving ``site_dir`` in a background thread; ``port=0`` picks a free port."""
    return DemoWebServer(site_dir, host, port)
