"""The guarded fetch against servers that try: DNS rebinding, header and body drips, slow
redirect chains, image formats whose size the header does not give, pixel bombs.

Every server here listens on a 127.0.0.x address; a stub resolver maps test names onto them.
"""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import cv2
import numpy as np
import pytest
from PIL import Image

from tasks.download.fetch import FetchPolicy, FetchRefused, check_image, guarded_download_image
from tasks.download.pinned_http import WATCHDOG
from tests.download.loopback import LoopbackServer, Route, png_bytes, redirect, send


def policy(**kw: object) -> FetchPolicy:
    options: dict = dict(
        deadline_s=1.0, max_bytes=10_000_000, max_pixels=10_000_000, allow_private_networks=True
    )
    return FetchPolicy(**(options | kw))


def fetch(url: str, p: FetchPolicy) -> tuple[bytes | None, str | None]:
    _, stream, error = guarded_download_image((0, url), p.deadline_s, None, None, p)
    return (stream.getvalue() if stream is not None else None), error


# -- DNS rebinding ------------------------------------------------------------------------------


@pytest.fixture
def rebinding(monkeypatch) -> Iterator[tuple[LoopbackServer, LoopbackServer]]:
    """``checked`` on 127.0.0.1 and ``internal`` on 127.0.0.2, same port; names ending in
    ``.rebind.test`` resolve to 127.0.0.1 on the first lookup and 127.0.0.2 after that."""
    checked = LoopbackServer("127.0.0.1")
    internal = LoopbackServer("127.0.0.2", port=checked.port)
    real = socket.getaddrinfo
    lookups: dict[str, int] = {}

    def getaddrinfo(host, port, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".rebind.test"):
            lookups[host] = lookups.get(host, 0) + 1
            host = "127.0.0.1" if lookups[host] == 1 else "127.0.0.2"
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield checked, internal
    checked.close()
    internal.close()


def only_first_loopback_allowed(port: int) -> FetchPolicy:
    """The guard on, with exactly one loopback address let through: 127.0.0.1 on ``port``."""
    return policy(allow_private_networks=False, allow_private_hosts=(f"127.0.0.1:{port}",))


def test_rebinding_name_is_fetched_from_the_checked_address(rebinding):
    checked, internal = rebinding
    image = png_bytes()
    checked.routes["/img.png"] = lambda h: send(h, image)
    internal.routes["/img.png"] = lambda h: send(h, b"metadata-secret", "text/plain")
    port = checked.port

    data, error = fetch(f"http://a.rebind.test:{port}/img.png", only_first_loopback_allowed(port))

    assert error is None and data == image
    assert internal.requests == [], "the connection went to the address that was not checked"
    assert checked.requests == ["/img.png"]


def test_rebinding_on_a_redirect_hop_is_pinned_too(rebinding):
    checked, internal = rebinding
    image = png_bytes()
    port = checked.port
    checked.routes["/start"] = redirect(f"http://b.rebind.test:{port}/img.png")
    checked.routes["/img.png"] = lambda h: send(h, image)
    internal.routes["/img.png"] = lambda h: send(h, b"secret", "text/plain")

    data, error = fetch(f"http://127.0.0.1:{port}/start", only_first_loopback_allowed(port))

    assert error is None and data == image
    assert internal.requests == []
    assert checked.requests == ["/start", "/img.png"]


def test_a_redirect_to_a_refused_address_is_refused_and_never_requested(rebinding):
    checked, internal = rebinding
    port = checked.port
    checked.routes["/start"] = redirect(f"http://127.0.0.2:{port}/img.png")
    internal.routes["/img.png"] = lambda h: send(h, png_bytes())

    data, error = fetch(f"http://127.0.0.1:{port}/start", only_first_loopback_allowed(port))

    assert data is None and error is not None and error.startswith("ssrf_refused:"), error
    assert internal.requests == []


@pytest.mark.parametrize(
    ("location", "reason"),
    [("ftp://127.0.0.1/x.png", "unsupported_scheme"), ("http://localhost:1/x", "ssrf_refused")],
)
def test_refused_redirects_are_counted_under_their_reason(rebinding, location, reason):
    checked, _ = rebinding
    checked.routes["/start"] = redirect(location)
    port = checked.port
    _, error = fetch(f"http://127.0.0.1:{port}/start", only_first_loopback_allowed(port))
    assert error is not None and error.startswith(f"{reason}:"), error


# -- one deadline -------------------------------------------------------------------------------

DRIP = 0.25


def header_drip(server_closing: threading.Event) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n")
        for _ in range(200):  # a header line, one byte at a time, well inside any timeout
            if server_closing.wait(DRIP):
                return
            h.wfile.write(b"X")
            h.wfile.flush()

    return route


def body_drip(server_closing: threading.Event) -> Route:
    body = png_bytes((64, 64))

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        for i in range(len(body)):
            if server_closing.wait(DRIP):
                return
            h.wfile.write(body[i : i + 1])
            h.wfile.flush()

    return route


def slow_redirect(location: str, server_closing: threading.Event) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        server_closing.wait(0.4)  # each hop well inside the timeout
        redirect(location)(h)

    return route


@pytest.fixture
def slow_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer("127.0.0.1")
    closing = server.closing
    server.routes = {f"/hop{i}": slow_redirect(f"/hop{i + 1}", closing) for i in range(9)}
    server.routes |= {
        "/headers": header_drip(closing),
        "/body": body_drip(closing),
        "/hop9": lambda h: send(h, png_bytes()),
    }
    yield server
    server.close()


@pytest.mark.parametrize("path", ["/headers", "/body", "/hop0"])
def test_one_deadline_covers_headers_body_and_every_redirect_hop(slow_server, path):
    deadline = 1.0
    started = time.monotonic()
    data, error = fetch(f"http://127.0.0.1:{slow_server.port}{path}", policy(deadline_s=deadline))
    elapsed = time.monotonic() - started
    assert data is None and error is not None and error.startswith("deadline_exceeded"), error
    # Without the total deadline these take 50 s, 14 s and 3.6 s.
    # A margin for a loaded 2-core machine; still well under the slow hop chain (3.6 s).
    assert elapsed < deadline + 1.0, f"{path} held the fetch for {elapsed:.2f}s"


def test_watchdog_leaves_no_watched_sockets_behind(slow_server):
    for path in ("/headers", "/hop8"):
        fetch(f"http://127.0.0.1:{slow_server.port}{path}", policy(deadline_s=0.5))
    time.sleep(0.1)
    with WATCHDOG._cond:
        live = [entry for _, _, entry in WATCHDOG._heap if entry[0] is not None]
    assert live == []


# -- image limits -------------------------------------------------------------------------------


def encoded(fmt: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    mode = "1" if fmt == "TIFF" else "RGB"
    kwargs = {"compression": "group4"} if fmt == "TIFF" else {}
    Image.new(mode, size).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF"])
def test_pixel_bombs_in_every_accepted_format_are_refused_from_the_header(fmt):
    bomb = encoded(fmt, (1100, 1000))
    with pytest.raises(FetchRefused, match=r"too_many_pixels: 1100x1000 = 1100000 px"):
        check_image(bomb, max_pixels=1_000_000)
    check_image(encoded(fmt, (1000, 1000)), max_pixels=1_000_000)


def test_a_format_whose_size_the_header_does_not_give_is_refused():
    """OpenCV decodes Radiance HDR, which Pillow cannot size: it used to pass the pixel
    cap unchecked and decode to 12 bytes per pixel."""
    ok, hdr = cv2.imencode(".hdr", np.zeros((1000, 1100, 3), np.float32))
    assert ok and bytes(hdr[:10]) == b"#?RADIANCE"
    with pytest.raises(FetchRefused, match="unsupported_format"):
        check_image(bytes(hdr), max_pixels=1_000_000)
    ok, small = cv2.imencode(".hdr", np.zeros((10, 10, 3), np.float32))
    with pytest.raises(FetchRefused, match="unsupported_format"):  # refused at any size
        check_image(bytes(small), max_pixels=1_000_000)


def test_opencv_pixel_limit_reaches_the_processes_started_under_it():
    from tasks.download.fetch import opencv_pixel_limit

    probe = (
        "import cv2, numpy as np\n"
        "ok, buf = cv2.imencode('.png', np.zeros((100, 100, 3), np.uint8))\n"
        "try:\n    cv2.imdecode(buf, cv2.IMREAD_COLOR); print('decoded')\n"
        "except cv2.error as e:\n    print('refused' if 'MAX_IMAGE_PIXELS' in str(e) else e)\n"
    )
    with opencv_pixel_limit(5_000):
        under = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    after = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert under.stdout.strip() == "refused", under.stderr
    assert after.stdout.strip() == "decoded", after.stderr


# -- the stage: every candidate counted once, under its reason ----------------------------------


def test_stage_sums_reasons_counted_before_and_inside_img2dataset(tmp_root):
    """SSRF refusals happen both in the pre-check (a literal private address) and inside
    img2dataset (a redirect to one): the stage adds them, and the redirect's target is
    never requested. The guard is on, with only the test server's own origin exempt."""
    import pandas as pd

    from tasks.core.config import PipelineConfig
    from tasks.core.storage import Storage
    from tasks.download.stage import download, shard_results

    public = LoopbackServer("127.0.0.1")
    internal = LoopbackServer("127.0.0.2", port=public.port)
    port = public.port
    ok, hdr = cv2.imencode(".hdr", np.zeros((600, 600, 3), np.float32))
    public.routes = {
        "/ok.png": lambda h: send(h, png_bytes((40, 40))),
        "/to-internal": redirect(f"http://127.0.0.2:{port}/secret.png"),
        "/to-ftp": redirect("ftp://127.0.0.1/x.png"),
        "/big.hdr": lambda h: send(h, bytes(hdr), "image/vnd.radiance"),
    }
    internal.routes = {"/secret.png": lambda h: send(h, png_bytes())}
    urls = [
        f"http://127.0.0.1:{port}/ok.png",
        f"http://127.0.0.1:{port}/to-internal",
        f"http://127.0.0.1:{port}/to-ftp",
        f"http://127.0.0.1:{port}/big.hdr",
        f"http://127.0.0.2:{port}/secret.png",  # refused before any request
        f"http://127.0.0.3:{port}/other.png",  # refused before any request
    ]
    cfg = PipelineConfig.model_validate(
        {
            "storage": {"root": str(tmp_root)},
            "crawl": {"allow_private_hosts": [f"127.0.0.1:{port}"]},
            "download": {"processes_count": 1, "thread_count": 4, "timeout": 3,
                         "image_size": 32, "max_image_pixels": 250_000},
        }
    )  # fmt: skip
    storage = Storage(cfg.storage)
    frame = pd.DataFrame({"url": urls, "caption": [f"c {i}" for i in range(len(urls))],
                          "page_url": ["p"] * len(urls), "source": ["site"] * len(urls)})  # fmt: skip
    storage.write_bytes(storage.uri("crawl", "candidates-00000.parquet"), frame.to_parquet())
    try:
        counts = download(cfg, storage).counts
    finally:
        public.close()
        internal.close()
    assert counts == {
        "candidates": 6,
        "successes": 1,
        "failed_ssrf_refused": 3,
        "failed_unsupported_format": 1,
        "failed_unsupported_scheme": 1,
    }
    assert internal.requests == []
    assert sorted(public.requests) == ["/big.hdr", "/ok.png", "/to-ftp", "/to-internal"]
    rows = shard_results(storage).set_index("url")
    assert rows.loc[urls[3], "reason"] == "unsupported_format"


# -- the pre-check: once per host, in parallel, with a timeout ----------------------------------


def test_precheck_looks_each_host_up_once_in_parallel_with_a_timeout():
    from tasks.download.pinned_http import Destination, check_destinations

    looked_up: list[str] = []
    release = threading.Event()

    def resolve(host: str) -> list[str]:
        looked_up.append(host)
        if host == "hangs.test":
            release.wait(30)  # a resolver that never answers
        return ["93.184.216.34"]  # a public address: never connected to here

    urls = [f"http://shop{i % 3}.test/{i}.png" for i in range(30)]
    urls += ["http://hangs.test/a.png", "http://hangs.test/b.png", "ftp://shop0.test/x.png"]
    started = time.monotonic()
    verdicts = check_destinations(urls, Destination(allow_private=False), 0.5, resolve)
    elapsed = time.monotonic() - started
    release.set()
    assert sorted(looked_up) == ["hangs.test", "shop0.test", "shop1.test", "shop2.test"]
    assert {u: v.reason for u, v in verdicts.items() if v is not None} == {
        "http://hangs.test/a.png": "dns_error",
        "http://hangs.test/b.png": "dns_error",
        "ftp://shop0.test/x.png": "unsupported_scheme",
    }
    assert elapsed < 0.5 + 2.0  # bounded by the timeout, not by the hanging lookup (30 s)


def test_proxy_settings_are_ignored(monkeypatch):
    """A fetch connects to the checked address itself; an HTTP(S)_PROXY in the environment
    (which urllib would follow) never sees the request."""
    proxy = LoopbackServer("127.0.0.1")
    target = LoopbackServer("127.0.0.1")
    target.routes["/img.png"] = lambda h: send(h, png_bytes())
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        data, error = fetch(f"http://127.0.0.1:{target.port}/img.png", policy())
    finally:
        proxy.close()
        target.close()
    assert error is None and data is not None
    assert proxy.requests == [] and target.requests == ["/img.png"]


def test_https_keeps_the_host_name_for_sni_and_the_host_header(monkeypatch, tmp_path):
    """Pinned to the checked address, a TLS connection still presents the URL's host name
    (SNI, certificate check) and sends it as Host."""
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from tasks.download.pinned_http import Destination, get

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "images.pinned.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("images.pinned.test")]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )  # fmt: skip
    server = LoopbackServer("127.0.0.1")
    seen: dict[str, str | None] = {}
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server_ctx.sni_callback = lambda sock, sni, ctx: seen.update(sni=sni)
    server.server.socket = server_ctx.wrap_socket(server.server.socket, server_side=True)

    def host_header(h: BaseHTTPRequestHandler) -> None:
        seen["host"] = h.headers["Host"]
        send(h, png_bytes())

    server.routes["/img.png"] = host_header
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    url = f"https://images.pinned.test:{server.port}/img.png"
    try:
        with get(url, Destination(True), time.monotonic() + 5, {}, io_timeout=5,
                 resolve=lambda host: ["127.0.0.1"], ssl_context=client_ctx) as response:  # fmt: skip
            body = response.read_capped(1_000_000)
    finally:
        server.close()
    assert body == png_bytes()
    assert seen == {"sni": "images.pinned.test", "host": f"images.pinned.test:{server.port}"}
