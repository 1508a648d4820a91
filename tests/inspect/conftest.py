"""The inspect app served on 127.0.0.1 over a copy of the session's small pipeline run, with
captions and URLs from a hostile web planted in it, and headless Chromium to drive it."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from tasks.core.config import PipelineConfig
from tasks.core.storage import Storage

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "inspect"
HOSTILE_CAPTIONS = ("<script>alert(1)</script>", '<img src=x onerror="alert(2)">')
HOSTILE_PAGE_URL = "javascript:alert(3)"


@dataclass(frozen=True)
class Served:
    url: str
    cfg: PipelineConfig
    storage: Storage
    hostile_keys: tuple[str, ...]
    """Kept samples whose captions are HOSTILE_CAPTIONS (and page URL HOSTILE_PAGE_URL)."""


def _plant_hostile_rows(samples: Path) -> tuple[str, ...]:
    """Give two kept rows captions that are HTML and script, and a javascript: page URL."""
    con = duckdb.connect()
    params = {"p": str(samples)}
    keys = [k for (k,) in con.execute(
        "SELECT key FROM read_parquet($p) WHERE keep ORDER BY key LIMIT 2", params
    ).fetchall()]  # fmt: skip
    table = con.sql(
        """SELECT * REPLACE (
               CASE key WHEN $a THEN $ca WHEN $b THEN $cb ELSE caption END AS caption,
               CASE WHEN key IN ($a, $b) THEN $page ELSE page_url END AS page_url)
           FROM read_parquet($p)""",
        params={**params, "a": keys[0], "b": keys[1], "ca": HOSTILE_CAPTIONS[0],
                "cb": HOSTILE_CAPTIONS[1], "page": HOSTILE_PAGE_URL},
    ).to_arrow_table()  # fmt: skip
    pq.write_table(table, samples)
    return tuple(keys)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="package")
def served(small_pipeline, tmp_path_factory) -> Iterator[Served]:
    import uvicorn

    from tasks.inspect.app import create_app

    root = tmp_path_factory.mktemp("inspect") / "root"
    shutil.copytree(small_pipeline.storage.root, root)
    keys = _plant_hostile_rows(root / "curate" / "samples.parquet")
    cfg = PipelineConfig.model_validate({**small_pipeline.config, "storage": {"root": str(root)}})
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "inspect did not start"
        time.sleep(0.05)
    try:
        yield Served(f"http://127.0.0.1:{port}", cfg, Storage(cfg.storage), keys)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="package")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=args)
        yield chromium
        chromium.close()


@dataclass
class Ui:
    """A fresh browser page, and the message of every dialog it opened (an alert would mean
    that injected script ran)."""

    page: Any
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture
def ui(browser) -> Iterator[Ui]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    ui = Ui(context.new_page())

    def on_dialog(dialog: Any) -> None:
        ui.dialogs.append(dialog.message)
        dialog.dismiss()

    ui.page.on("dialog", on_dialog)
    yield ui
    context.close()
