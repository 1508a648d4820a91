"""Curate fixtures: one real img2dataset download of the planted test web per session (it
takes tens of seconds here), copied into each test's own storage root."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tasks.core.config import PipelineConfig, load_config
from tests.curate.webdata import (
    BLOCKED_DOMAIN,
    ImageServer,
    Planted,
    build_site,
    download,
    write_eval_dataset,
)

PER_SHARD = 30


@dataclass(frozen=True)
class DownloadedWeb:
    download_dir: Path
    eval_dir: Path
    planted: Planted

    def root_with_download(self, root: Path) -> Path:
        """A fresh storage root holding a copy of the download stage's output."""
        shutil.copytree(self.download_dir, root / "download")
        return root

    def config(self, root: Path, **curate: Any) -> PipelineConfig:
        return load_config(
            {
                "storage": {"root": str(root)},
                "curate": {"url_blocklist": [BLOCKED_DOMAIN], **curate},
                "evaluate": {"datasets": [{"name": "fmnist", "path": str(self.eval_dir)}]},
            }
        )


@pytest.fixture(scope="session")
def downloaded_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DownloadedWeb]:
    base = tmp_path_factory.mktemp("curate-web")
    server = ImageServer(base / "site")
    try:
        rows, planted = build_site(base / "site", server.url)
        download(rows, base / "download", base / "work", per_shard=PER_SHARD)
    finally:
        server.close()
    write_eval_dataset(base / "eval")
    yield DownloadedWeb(base / "download", base / "eval", planted)
