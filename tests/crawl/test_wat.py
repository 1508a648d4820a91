"""Common Crawl input: WAT and WARC files written here with warcio, read by the crawl stage."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from demo.server import REDIRECT_PAGE_TARGET, serve
from tasks.core.config import CrawlConfig, PipelineConfig
from tasks.core.storage import Storage
from tasks.crawl.stage import crawl
from tasks.crawl.wat import ArchiveInputError, read_archive
from tests.crawl.hostile_inputs import gzip_bomb, write_wat_with_endless_header

DATE = "2024-03-01T12:30:00Z"


def wat_json(page: str, links: list[dict[str, str]], base: str | None = None) -> bytes:
    head = {"Title": "a page", **({"Base": base} if base else {})}
    payload = {
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": page},
            "Payload-Metadata": {
                "Actual-Content-Type": "application/http; msgtype=response",
                "HTTP-Response-Metadata": {
                    "Response-Message": {"Status": "200"},
                    "HTML-Metadata": {"Head": head, "Links": links},
                },
            },
        }
    }
    return json.dumps(payload).encode()


def write_wat(path: Path) -> None:
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        writer.write_record(writer.create_warcinfo_record(path.name, {"software": "test"}))

        def metadata(uri: str, body: bytes, ctype: str = "application/json") -> None:
            record = writer.create_warc_record(
                uri, "metadata", payload=io.BytesIO(body), warc_content_type=ctype,
                warc_headers_dict={"WARC-Date": DATE},
            )  # fmt: skip
            writer.write_record(record)

        links = [
            {"path": "A@/href", "url": "/elsewhere.html", "text": "a link, not an image"},
            {"path": "IMG@/src", "url": "img/1.png", "alt": "  a red\n dress "},
            {"path": "IMG@/src", "url": "https://CDN.example/2.jpg#x"},
            {"path": "IMG@/src", "url": "data:image/png;base64,AAAA", "alt": "inline"},
        ]
        metadata(
            "http://shop.example/a/index.html", wat_json("http://shop.example/a/index.html", links)
        )
        based = [{"path": "IMG@/src", "url": "x.png", "alt": "coat on sale"}]
        metadata(
            "http://shop.example/b.html",
            wat_json("http://shop.example/b.html", based, "http://shop.example/media/"),
        )
        metadata("http://shop.example/broken.html", b"{not json")
        metadata("http://shop.example/fields", b"a: b\r\n", "application/warc-fields")


def write_warc(path: Path) -> None:
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=False)

        def response(uri: str, ctype: str, body: bytes) -> None:
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            record = writer.create_warc_record(
                uri, "response", payload=io.BytesIO(body), http_headers=headers,
                warc_headers_dict={"WARC-Date": DATE},
            )  # fmt: skip
            writer.write_record(record)

        html = (
            '<html><body><img src="/a/img/1.png" alt="a red dress">'
            '<img src="s.png" srcset="s.png 1x, l.png 2x" alt="two sneakers">'
            '<figure><img src="f.png"><figcaption>ankle boots</figcaption></figure></body></html>'
        )
        response("http://shop.example/a/index.html", "text/html; charset=utf-8", html.encode())
        response("http://shop.example/pic.jpg", "image/jpeg", b"\xff\xd8\xff")
        request = writer.create_warc_record(
            "http://shop.example/", "request", payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n"),
            http_headers=StatusAndHeaders("GET / HTTP/1.1", [], is_http_request=True),
        )  # fmt: skip
        writer.write_record(request)


@pytest.fixture
def archives(tmp_path: Path) -> tuple[Path, Path]:
    wat, warc = tmp_path / "CC-test.warc.wat.gz", tmp_path / "CC-test.warc"
    write_wat(wat)
    write_warc(warc)
    return wat, warc


def test_wat_record_pairs(archives) -> None:
    wat, _ = archives
    result = read_archive(str(wat))
    when = datetime(2024, 3, 1, 12, 30, tzinfo=UTC)
    source = "wat:CC-test.warc.wat.gz"
    page_a, page_b = "http://shop.example/a/index.html", "http://shop.example/b.html"
    assert result.pairs == [
        ("http://shop.example/a/img/1.png", "a red dress", page_a, when, source),
        ("https://cdn.example/2.jpg", "", page_a, when, source),
        ("http://shop.example/media/x.png", "coat on sale", page_b, when, source),
    ]
    c = result.counts
    assert (c["records"], c["wat_records"], c["records_other"]) == (5, 3, 2)
    assert c["wat_records_bad_json"] == 1 and c["wat_images_unusable_url"] == 1
    assert [e["reason"] for e in result.errors] == ["bad_wat_json"]


def test_warc_response_pairs(archives) -> None:
    _, warc = archives
    result = read_archive(str(warc))
    assert [(u, cap) for u, cap, *_ in result.pairs] == [
        ("http://shop.example/a/img/1.png", "a red dress"),
        ("http://shop.example/a/l.png", "two sneakers"),
        ("http://shop.example/a/f.png", "ankle boots"),
    ]
    assert {p[4] for p in result.pairs} == {"warc:CC-test.warc"}
    c = result.counts
    assert (c["warc_responses"], c["warc_responses_not_html"], c["records_other"]) == (2, 1, 1)


def test_crawl_stage_on_archives(archives, tmp_root: Path) -> None:
    wat, warc = archives
    cfg = PipelineConfig.model_validate(
        {"storage": {"root": str(tmp_root)}, "crawl": {"wat_files": [str(wat), str(warc)]}}
    )
    result = crawl(cfg, Storage(cfg.storage))
    frame = pd.read_parquet(tmp_root / "crawl" / "candidates-00000.parquet")
    assert list(frame.columns) == [
        "url", "caption", "page_url", "source", "crawl_time", "caption_original_chars",
    ]  # fmt: skip
    assert str(frame["crawl_time"].dtype) == "datetime64[us, UTC]"
    assert (frame["crawl_time"] == pd.Timestamp(DATE)).all()
    # "a red dress" on /a/img/1.png is in both files: the WARC copy is the dropped duplicate.
    assert len(frame) == 5 and result.counts["duplicates_dropped"] == 1
    assert result.counts["pairs_found"] == 6 == len(frame) + result.counts["duplicates_dropped"]
    assert set(frame["source"]) == {"wat:CC-test.warc.wat.gz", "warc:CC-test.warc"}
    errors = pd.read_parquet(tmp_root / "crawl" / "errors.parquet")
    assert list(errors["reason"]) == ["bad_wat_json"] and errors["source"][0] == str(wat)


def test_bad_archive_inputs_named(tmp_path: Path, tmp_root: Path) -> None:
    missing = tmp_path / "nope.wat.gz"
    cfg = PipelineConfig.model_validate(
        {"storage": {"root": str(tmp_root)}, "crawl": {"wat_files": [str(missing)]}}
    )
    with pytest.raises(ArchiveInputError, match="nope.wat.gz does not exist"):
        crawl(cfg, Storage(cfg.storage))
    assert not (tmp_root / "crawl").exists()  # failed before any output
    junk = tmp_path / "junk.warc.gz"
    junk.write_bytes(b"\x1f\x8b\x08\x00 this is not gzip nor WARC" * 10)
    with pytest.raises(ArchiveInputError, match="junk.warc.gz"):
        read_archive(str(junk))
    empty = tmp_path / "empty.warc"
    empty.write_bytes(b"")
    with pytest.raises(ArchiveInputError, match="empty.warc holds no WARC records"):
        read_archive(str(empty))


def test_crawl_stage_reads_and_writes_s3(archives, s3_server, s3_bucket) -> None:
    wat, _ = archives
    root = f"s3://{s3_bucket}/run"
    storage_cfg = {"root": root, "s3_endpoint_url": s3_server.endpoint_url}
    cfg = PipelineConfig.model_validate(
        {"storage": storage_cfg, "crawl": {"wat_files": [f"s3://{s3_bucket}/in/{wat.name}"]}}
    )
    storage = Storage(cfg.storage)
    storage.write_bytes(f"s3://{s3_bucket}/in/{wat.name}", wat.read_bytes())
    result = crawl(cfg, storage)
    assert result.outputs["candidates"] == [f"{root}/crawl/candidates-00000.parquet"]
    with storage.open(result.outputs["candidates"][0]) as fh:
        frame = pd.read_parquet(fh)
    assert len(frame) == result.counts["pairs_after_dedup"] == 3
    assert storage.exists(f"{root}/crawl/errors.parquet")


def test_archive_over_http_guarded(archives, tmp_path: Path, tmp_root: Path) -> None:
    wat, _ = archives
    site = tmp_path / "site"
    site.mkdir()
    (site / wat.name).write_bytes(wat.read_bytes())
    with serve(site) as server:
        uri = f"{server.url}/{wat.name}"

        def config(**crawl_options: object) -> PipelineConfig:
            crawl_options = {"wat_files": [uri], **crawl_options}
            return PipelineConfig.model_validate(
                {"storage": {"root": str(tmp_root)}, "crawl": crawl_options}
            )

        with pytest.raises(ArchiveInputError, match="refused \\(ssrf_refused\\)"):
            crawl(config(), Storage(config().storage))
        result = crawl(config(allow_private_networks=True), Storage(config().storage))
        assert result.counts["pairs_after_dedup"] == 3
        # A redirect is not followed, though its target is a readable WAT file here: the
        # guard could not check where a redirect leads.
        (site / "planted").mkdir()
        (site / "planted" / "moved-target.html").write_bytes(wat.read_bytes())
        moved = f"{server.url}/hostile/moved.html"
        cfg = config(allow_private_networks=True, wat_files=[moved])
        with pytest.raises(ArchiveInputError, match="hostile/moved.html: HTTP 301"):
            crawl(cfg, Storage(cfg.storage))
        direct = config(
            allow_private_networks=True, wat_files=[f"{server.url}{REDIRECT_PAGE_TARGET}"]
        )
        assert crawl(direct, Storage(direct.storage)).counts["pairs_after_dedup"] == 3


def write_malformed_wat(path: Path) -> dict[str, str]:
    """A WAT file whose records are each broken one way, between good ones; returns each
    broken record's page URL and the reason it must be reported under."""
    good_links = [{"path": "IMG@/src", "url": "/ok.png", "alt": "a good one"}]
    envelope_links = json.loads(wat_json("http://m.example/links-5", []))
    envelope_links["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"][
        "Links"
    ] = 5
    broken = {
        "http://m.example/links-5": (json.dumps(envelope_links).encode(), "bad_wat_shape"),
        "http://m.example/list": (b"[1, 2, 3]", "bad_wat_shape"),
        "http://m.example/string": (b'"just a string"', "bad_wat_shape"),
        "http://m.example/envelope-list": (b'{"Envelope": []}', "bad_wat_shape"),
        "http://m.example/link-not-object": (
            wat_json("http://m.example/link-not-object", ["IMG@/src"]),  # type: ignore[list-item]
            "bad_wat_shape",
        ),
        "http://m.example/url-number": (
            wat_json("http://m.example/url-number", [{"path": "IMG@/src", "url": 7}]),  # type: ignore[dict-item]
            "bad_wat_shape",
        ),
        "http://m.example/bad-json": (b'{"Envelope": ', "bad_wat_json"),
        "http://m.example/deep": (b"[" * 4_000 + b"]" * 4_000, "bad_wat_json"),
        "http://m.example/not-utf8": (b'{"Envelope": "\xff\xfe"}', "bad_wat_utf8"),
        "http://m.example/too-large": (
            wat_json("http://m.example/too-large", good_links * 500),
            "wat_record_too_large",
        ),
    }
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)

        def metadata(uri: str, body: bytes) -> None:
            record = writer.create_warc_record(
                uri, "metadata", payload=io.BytesIO(body), warc_content_type="application/json",
                warc_headers_dict={"WARC-Date": DATE},
            )  # fmt: skip
            writer.write_record(record)

        for n, (uri, (body, _)) in enumerate(broken.items()):
            page = f"http://m.example/good-{n}"
            metadata(page, wat_json(page, [{"path": "IMG@/src", "url": f"/ok-{n}.png"}]))
            metadata(uri, body)
    return {uri: reason for uri, (_, reason) in broken.items()}


def test_malformed_wat_records_counted_and_skipped(tmp_path: Path, tmp_root: Path) -> None:
    wat = tmp_path / "malformed.warc.wat.gz"
    expected = write_malformed_wat(wat)
    cfg = PipelineConfig.model_validate(
        {
            "storage": {"root": str(tmp_root)},
            "crawl": {"wat_files": [str(wat)], "max_record_bytes": 10_000},
        }
    )
    result = crawl(cfg, Storage(cfg.storage))
    c = result.counts
    # Every good record between the broken ones still gave its pair.
    frame = pd.read_parquet(tmp_root / "crawl" / "candidates-00000.parquet")
    assert sorted(frame["page_url"]) == sorted(f"http://m.example/good-{n}" for n in range(10))
    assert c["archive_wat_records_read"] == 10 and c["archive_wat_records_failed"] == 10
    assert c["archive_wat_records"] == 20
    assert (c["archive_wat_records_bad_shape"], c["archive_wat_records_bad_json"]) == (6, 2)
    assert (c["archive_wat_records_bad_utf8"], c["archive_wat_records_too_large"]) == (1, 1)
    errors = pd.read_parquet(tmp_root / "crawl" / "errors.parquet")
    assert dict(zip(errors["url"], errors["reason"], strict=True)) == expected
    assert c["errors_reported"] == 10 and set(errors["source"]) == {str(wat)}


def test_wat_images_per_record_capped(archives) -> None:
    wat, _ = archives
    result = read_archive(str(wat), cfg=CrawlConfig(max_images_per_page=1))
    # Page a has two usable images and a data: URI; page b one image.
    assert [p[0] for p in result.pairs] == [
        "http://shop.example/a/img/1.png",
        "http://shop.example/media/x.png",
    ]
    assert result.counts["images_skipped_page_cap"] == 2


def test_endless_record_headers_refuse_the_archive(tmp_path: Path) -> None:
    one_line = tmp_path / "line.warc.wat.gz"
    write_wat_with_endless_header(one_line, 3)
    many_lines = tmp_path / "lines.warc.wat.gz"
    head = b"WARC/1.0\r\nWARC-Type: metadata\r\n"
    many_lines.write_bytes(gzip_bomb(head, b"X-Padding: 1\r\n", 300_000, b"\r\n"))
    cfg = CrawlConfig(max_record_bytes=1_000_000)
    for path in (one_line, many_lines):
        with pytest.raises(ArchiveInputError, match=f"{path.name}: record headers over 1000000"):
            read_archive(str(path), cfg=cfg)
    # The same headers under the cap are read as usual.
    result = read_archive(str(one_line), cfg=CrawlConfig(max_record_bytes=4_000_000))
    assert result.counts["wat_records_read"] == 2
