"""Reruns that cannot pair a caption with the wrong image: the web changes overnight, the
nightly ingest re-crawls and re-downloads, and a user reruns only the shard stage.

img2dataset keys are positional, so the old ``curate/samples.parquet`` names other images in
the new download tars. The shard-only rerun must refuse, naming the stale stage and the
command to run; with ``--with-upstream`` it reruns curate first, and every training sample's
image is the one its URL serves.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from demo.server import serve
from flows.cli import main
from model.tario import open_samples


def _write_site(site: Path, names: list[str]) -> None:
    """One page whose images appear in ``names`` order; each image is distinct noise."""
    (site / "img").mkdir(parents=True, exist_ok=True)
    tags = []
    for name in names:
        path = site / "img" / f"{name}.png"
        if not path.exists():
            seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
            pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path)
        tags.append(f'<img src="/img/{name}.png" alt="a photo of the object called {name}">')
    (site / "index.html").write_text("<html><body>" + "\n".join(tags) + "</body></html>")


def _samples(folder: Path) -> list[tuple[dict, bytes]]:
    """(json, png bytes) of every sample in the tars of a folder."""
    return [
        (json.loads(sample["json"]), sample["png"])
        for tar in sorted(folder.glob("*.tar"))
        for sample in open_samples(str(tar))
    ]


@pytest.fixture
def changing_web(tmp_path):
    site = tmp_path / "site"
    _write_site(site, [f"old{i:02d}" for i in range(40)])
    with serve(site) as server:
        yield site, server.url


def test_shard_rerun_on_a_stale_curate_is_refused_then_runs_with_upstream(
    prefect_harness, changing_web, tmp_path, capsys
):
    site, url = changing_web
    config = {
        "storage": {"root": str(tmp_path / "root")},
        "crawl": {"seeds": [url + "/"], "allow_private_networks": True, "max_pages": 5},
        "download": {"processes_count": 1, "thread_count": 8, "timeout": 3,
                     "resize_mode": "no", "encode_format": "png"},
        "curate": {"decontaminate": False, "gate": "warn", "language_min_chars": 1000},
        "shard": {"samples_per_shard": 16},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path), "--stages", "crawl,download,curate,shard"]) == 0

    # Overnight, 30 new images appear before the old ones; the nightly ingest runs.
    _write_site(site, [f"new{i:02d}" for i in range(30)] + [f"old{i:02d}" for i in range(40)])
    assert main(["run", str(path), "--stages", "crawl,download", "--force", "crawl"]) == 0
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    status = capsys.readouterr().out
    assert "curate    stale because download was rerun since" in status, status
    assert "shard     stale because curate is stale" in status, status

    # A user changes the shard size and reruns only the shard stage: refused.
    config["shard"]["samples_per_shard"] = 8
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path), "--stages", "shard"]) == 3
    err = capsys.readouterr().err
    assert "upstream stage 'curate' is stale" in err, err
    assert f"clipflow run {path} --stages curate,shard" in err, err
    assert main(["shard", str(path)]) == 3  # the stage's own command refuses too
    assert "upstream stage 'curate' is stale" in capsys.readouterr().err

    assert main(["run", str(path), "--stages", "shard", "--with-upstream"]) == 0
    samples = _samples(tmp_path / "root" / "shards")
    assert len(samples) == 70
    downloaded = {meta["url"]: image for meta, image in _samples(tmp_path / "root" / "download")}
    for meta, image in samples:
        assert image == downloaded[meta["url"]], meta["url"]  # bytes as downloaded
        assert meta["image_sha256"] == hashlib.sha256(image).hexdigest()  # checked on copy
        served = Image.open(site / meta["url"].removeprefix(url + "/"))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(image))), np.asarray(served))
