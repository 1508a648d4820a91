"""Shard-stage inputs: real img2dataset output (fetched from an HTTP server on 127.0.0.1
serving Fashion-MNIST images) plus a ``curate/samples.parquet`` in the curate contract's
shape and a curate manifest. Built once per session, copied per test (local or S3)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from demo.offline_data import FASHION_MNIST_CLASSES, fashion_mnist
from model.tario import IMAGE_EXTENSIONS, image_extension, open_samples
from tasks.core.config import PipelineConfig
from tests.fixtures_s3 import upload_tree

N_IMAGES = 48
PER_DOWNLOAD_SHARD = 20


def _serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _write_site(site: Path) -> list[tuple[str, str]]:
    """Fashion-MNIST images as 56x56 PNGs; (file name, caption) each."""
    images, labels = fashion_mnist("t10k")
    site.mkdir()
    pages = []
    for i in range(N_IMAGES):
        name = f"img{i:03d}.png"
        Image.fromarray(images[i]).resize((56, 56)).save(site / name)
        pages.append((name, f"a photo of a {FASHION_MNIST_CLASSES[labels[i]]}, number {i}"))
    return pages


def _curate_outputs(root: Path) -> int:
    """samples.parquet from img2dataset's per-shard parquet (every 4th sample dropped, the
    sha256 of each image as curate records it) and a curate manifest; returns the kept count."""
    images = image_bytes_of(root)
    frames = []
    for parquet in sorted((root / "download").glob("[0-9]*.parquet")):
        rows = pd.read_parquet(parquet)
        rows = rows[rows["status"] == "success"].assign(download_shard=parquet.stem + ".tar")
        frames.append(rows)
    samples = pd.concat(frames, ignore_index=True)
    samples["image_sha256"] = [hashlib.sha256(images[k]).hexdigest() for k in samples["key"]]
    dropped = samples.index % 4 == 3
    samples["keep"] = ~dropped
    samples["reasons"] = [["too_small"] if d else [] for d in dropped]
    samples["clip_score"] = [0.2 + 0.01 * i for i in range(len(samples))]
    (root / "curate").mkdir()
    samples.to_parquet(root / "curate" / "samples.parquet", index=False)
    kept = int(samples["keep"].sum())
    manifest = {
        "stage": "curate",
        "counts": {"input": len(samples), "kept": kept, "dropped_too_small": int(dropped.sum())},
        "outputs": {"samples": str(root / "curate" / "samples.parquet")},
        "finished_at": "2026-01-01T00:00:00+00:00",
    }
    (root / "_manifests").mkdir()
    (root / "_manifests" / "curate.json").write_text(json.dumps(manifest))
    return kept


@pytest.fixture(scope="session")
def shard_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage root holding download/ (real img2dataset output) and curate/ outputs."""
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"  # its import would ask PyPI for a newer version
    import img2dataset

    base = tmp_path_factory.mktemp("shard-inputs")
    pages = _write_site(base / "site")
    server, url = _serve(base / "site")
    root = base / "root"
    candidates = pd.DataFrame(
        {
            "url": [f"{url}/{name}" for name, _ in pages],
            "caption": [caption for _, caption in pages],
            "page_url": [f"{url}/page{i // 8}.html" for i in range(len(pages))],
            "source": "site",
        }
    )
    candidates.to_parquet(base / "candidates.parquet", index=False)
    try:
        img2dataset.download(
            url_list=str(base / "candidates.parquet"),
            output_folder=str(root / "download"),
            input_format="parquet",
            url_col="url",
            caption_col="caption",
            save_additional_columns=["page_url", "source"],
            output_format="webdataset",
            image_size=56,
            resize_mode="no",
            processes_count=1,
            thread_count=4,
            number_sample_per_shard=PER_DOWNLOAD_SHARD,
            compute_hash="sha256",
            enable_wandb=False,
        )
    finally:
        server.shutdown()
    assert _curate_outputs(root) > 0
    return root


def load_kept(root: Path) -> pd.DataFrame:
    samples = pd.read_parquet(root / "curate" / "samples.parquet")
    return samples[samples["keep"]]


@pytest.fixture
def local_root(shard_inputs: Path, tmp_path: Path) -> Path:
    """A private copy of the shard inputs on local disk."""
    root = tmp_path / "root"
    shutil.copytree(shard_inputs, root)
    return root


def local_config(root: Path, **shard: object) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {"storage": {"root": str(root)}, "shard": {"samples_per_shard": 5, **shard}}
    )


@pytest.fixture
def s3_root(shard_inputs: Path, s3_server, s3_bucket: str) -> Iterator[str]:
    """The shard inputs copied to a fresh bucket on the session's moto_server."""
    upload_tree(shard_inputs, s3_server.endpoint_url, s3_bucket, "root")
    yield f"s3://{s3_bucket}/root"


def image_bytes_of(root: Path) -> dict[str, bytes]:
    """key -> image bytes, as img2dataset stored them in the download tars."""
    out = {}
    for tar_path in sorted((root / "download").glob("*.tar")):
        for sample in open_samples(str(tar_path), extensions=IMAGE_EXTENSIONS):
            out[sample["__key__"]] = sample[image_extension(sample)]
    return out


def png_bytes(size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()
