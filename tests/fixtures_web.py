"""Web fixtures: the demo web (built by demo/web.py) served on 127.0.0.1."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from demo.web import build_demo_web, serve


@dataclass(frozen=True)
class DemoWeb:
    """The served demo web: ``url`` (origin, no trailing slash), ``site_dir``, and
    ``planted`` (the parsed planted.json, whose URLs are paths on ``url``)."""

    url: str
    site_dir: Path
    planted: dict[str, Any]
    summary: dict[str, Any]
    requests: Counter[str]
    """GET requests the server received, by path, over the whole session."""

    def abs(self, path: str) -> str:
        """The absolute URL of a path from planted.json (``/img/fashion/00001.png``)."""
        return self.url + path


@pytest.fixture(scope="session")
def demo_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoWeb]:
    """The "test" preset (~300 images, ~30 pages), built once per session and served."""
    site_dir = tmp_path_factory.mktemp("demo_web")
    summary = build_demo_web(site_dir, "test")
    planted = json.loads((site_dir / "planted.json").read_text(encoding="utf-8"))
    with serve(site_dir) as server:
        yield DemoWeb(server.url, site_dir, planted, summary, server.requests)
