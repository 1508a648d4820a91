"""The inspect app's reading side: tar members by byte offset, report paths kept inside the
root, and the same pages over an s3:// root (moto_server on 127.0.0.1)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import boto3
import pytest
from starlette.testclient import TestClient

from model.tario import SampleWriter, member_index
from tasks.core.config import PipelineConfig, StorageConfig
from tasks.core.storage import Storage
from tasks.inspect.app import create_app
from tasks.inspect.files import PathRefused, resolve
from tasks.inspect.images import TarImages


def test_member_index_gives_offsets_that_read_back_each_member(tmp_path: Path):
    tar = tmp_path / "000000.tar"
    members = {f"{i:06d}": {"png": os.urandom(100 + 700 * i), "txt": b"a caption"}
               for i in range(5)}  # fmt: skip
    with open(tar, "wb") as fh, SampleWriter(fh) as writer:
        for key, sample in members.items():
            writer.write(key, sample)
    with open(tar, "rb") as fh:
        index = member_index(fh, str(tar))
    images = TarImages(Storage(StorageConfig(root=str(tmp_path))), thumbnail_px=64)
    for key, sample in members.items():
        offset, size = index[key]["png"]
        assert images.read_range(str(tar), offset, size) == sample["png"]
        assert images.image(str(tar), key) == sample["png"]
    assert images.image(str(tar), "missing") is None


def test_report_paths_stay_inside_the_report_folders(tmp_path: Path):
    storage = Storage(StorageConfig(root=str(tmp_path / "root")))
    report = tmp_path / "root" / "curate" / "report"
    report.mkdir(parents=True)
    (report / "funnel.png").write_bytes(b"png")
    (tmp_path / "secret.html").write_text("secret")
    (report / "escape.html").symlink_to(tmp_path / "secret.html")
    assert resolve(storage, "curate/report/funnel.png") == str(report / "funnel.png")
    for path in ("curate/report/escape.html", "curate/report/%2e%2e/samples.parquet",
                 "_manifests/curate.json", "curate/report/../../x.png", "/etc/passwd",
                 "curate/report/a%00.png", "curate/report/data.parquet"):  # fmt: skip
        with pytest.raises(PathRefused):
            resolve(storage, path)


def _upload(storage: Storage, bucket: str, endpoint: str) -> None:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    for rel in ("curate/samples.parquet", "curate/report/funnel.png", "eval/results.json",
                "eval/search/images.faiss", "eval/search/images.parquet",
                "train/checkpoints/latest.pt",
                *(f"download/{Path(p).name}" for p in storage.glob("download/*.tar"))):  # fmt: skip
        s3.upload_file(storage.uri(rel), bucket, f"run/{rel}")


def test_the_pages_work_on_an_s3_root(small_pipeline, s3_server, s3_bucket: str):
    _upload(small_pipeline.storage, s3_bucket, s3_server.endpoint_url)
    cfg = PipelineConfig.model_validate({
        **small_pipeline.config,
        "storage": {"root": f"s3://{s3_bucket}/run", "s3_endpoint_url": s3_server.endpoint_url},
    })  # fmt: skip
    client = TestClient(create_app(cfg))
    assert "curate funnel" in client.get("/").text
    kept = client.get("/kept").text
    key = kept.split('data-key="')[1].split('"')[0]
    image = client.get(f"/img/sample/{key}")
    assert image.status_code == 200 and image.headers["content-type"].startswith("image/")
    from PIL import Image

    assert Image.open(io.BytesIO(image.content)).size[0] > 0
    assert client.get("/files/curate/report/funnel.png").content[:4] == b"\x89PNG"
    assert client.get("/files/../_manifests/curate.json").status_code in (403, 404)
    assert client.get("/search?q=bag").text.count('class="card') == cfg.inspect.search_results


def test_clipflow_inspect_serves_the_config_on_loopback_by_default(monkeypatch):
    """`clipflow inspect CONFIG` loads the demo config (it only reads outputs, so the demo's
    loopback seeds do not refuse it) and binds 127.0.0.1 unless told otherwise."""
    import uvicorn

    from flows.cli import main

    monkeypatch.delenv("CLIPFLOW_ALLOW_PRIVATE_NETWORKS")
    bound: list[tuple[str, int]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: bound.append((host, port)))
    assert main(["inspect", "configs/demo.yaml"]) == 0
    assert main(["inspect", "configs/demo.yaml", "--port", "8799"]) == 0
    assert bound == [("127.0.0.1", 8770), ("127.0.0.1", 8799)]
