"""The SSRF guard in the crawler, with allow_private_networks false.

Only loopback is ever handed to the crawler: 127.0.0.1 / 127.0.0.2 / ::1 literals, the name
``localhost``, and ``intranet.test``, which a resolver table maps onto 127.0.0.1 (no DNS).
To get past the first page, the tests exempt exactly the demo server's ``host:port``
(``crawl.allow_private_hosts``) and check that every other loopback destination is refused.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from demo.server import SSRF_TEST_NAME
from tests.crawl.test_site_crawl import assert_accounted, failures, run_crawl

LOOPBACK_NAMES = {SSRF_TEST_NAME: ["127.0.0.1"], "localhost": ["127.0.0.1"]}


def resolve_table(host: str) -> list[str]:
    if host not in LOOPBACK_NAMES:
        raise OSError(f"{host}: not in the test's resolver table")
    return LOOPBACK_NAMES[host]


def guarded(**options):
    return {"allow_private_networks": False, **options}


def test_loopback_seeds_refused(demo_web) -> None:
    port = urlsplit(demo_web.url).port
    seeds = [f"http://127.0.0.1:{port}/", f"http://localhost:{port}/", f"http://[::1]:{port}/"]
    result = run_crawl(seeds, **guarded())
    assert failures(result) == {seed: "ssrf_refused" for seed in seeds}
    assert result.counts["pages_fetched"] == 0 and not result.pairs
    assert_accounted(result)


def test_name_resolving_to_loopback_refused_at_connect(demo_web) -> None:
    port = urlsplit(demo_web.url).port
    seed = f"http://{SSRF_TEST_NAME}:{port}/"
    result = run_crawl([seed], resolve_table, **guarded())
    assert failures(result) == {seed: "ssrf_refused"}
    assert "127.0.0.1" in result.errors[0]["detail"]
    # The same name with private networks allowed does connect: the refusal was the guard's.
    allowed = run_crawl([seed], resolve_table, max_pages=1)
    assert allowed.counts["pages_fetched"] == 1


def test_links_to_loopback_refused(demo_web) -> None:
    port = urlsplit(demo_web.url).port
    options = guarded(
        allow_private_hosts=[f"127.0.0.1:{port}"],
        allowed_domains=["127.0.0.1", "127.0.0.2", "localhost", "::1"],
    )
    result = run_crawl([demo_web.abs("/ssrf/links.html")], **options)
    assert failures(result) == {
        f"http://localhost:{port}/": "ssrf_refused",
        f"http://127.0.0.2:{port}/": "ssrf_refused",
        f"http://[::1]:{port}/": "ssrf_refused",
    }
    assert result.counts["pages_fetched"] == 1
    assert [caption for _, caption, _, _ in result.pairs] == ["an image on the links page"]


def test_redirects_to_loopback_refused(demo_web) -> None:
    port = urlsplit(demo_web.url).port
    options = guarded(
        allow_private_hosts=[f"127.0.0.1:{port}"],
        allowed_domains=["127.0.0.1", "localhost", SSRF_TEST_NAME],
    )
    seeds = [
        demo_web.abs("/ssrf/redirect-localhost.html"),
        demo_web.abs("/ssrf/redirect-named.html"),
    ]
    result = run_crawl(seeds, resolve_table, **options)
    assert failures(result) == {seed: "ssrf_refused" for seed in seeds}
    assert not result.pairs  # the redirect target was never fetched
    # With private networks allowed, both redirects are followed (one page, two hosts).
    followed = run_crawl(
        seeds, resolve_table, allowed_domains=options["allowed_domains"], max_pages=2
    )
    assert {page for _, _, page, _ in followed.pairs} == {
        f"http://localhost:{port}/planted/moved-target.html",
        f"http://{SSRF_TEST_NAME}:{port}/planted/moved-target.html",
    }
    assert followed.counts["pages_failed"] == 0


class _RobotsRedirect(BaseHTTPRequestHandler):
    """A robots.txt that redirects to another loopback address."""

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        port = self.server.server_address[1]
        routes = {
            "/robots.txt": (302, f"http://127.0.0.2:{port}/robots.txt", b""),
        }
        status, location, body = routes.get(self.path, (200, "", b"User-agent: *\nDisallow: /\n"))
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_robots_redirects_checked_per_hop() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RobotsRedirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        seed = f"http://127.0.0.1:{port}/page.html"
        result = run_crawl([seed], **guarded(allow_private_hosts=[f"127.0.0.1:{port}"]))
        assert failures(result) == {seed: "ssrf_refused"}
        assert "127.0.0.2" in result.errors[0]["detail"]
    finally:
        server.shutdown()
        server.server_close()
