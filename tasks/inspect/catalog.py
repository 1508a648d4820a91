"""DuckDB over the stage outputs, for the inspect app: every query is a file in
``sql/inspect/`` with named parameters (request values are bound, never spliced into SQL) and
pages with LIMIT/OFFSET and counts apart, so a page sorts no more than it skips and shows.

Tables are views over the Parquet files where they are (local, or S3 through fsspec and a
pyarrow dataset that DuckDB scans lazily), never loaded whole.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow.dataset as pads
from pyarrow.fs import FSSpecHandler, PyFileSystem

from tasks.core.sql import load_sql, run_sql
from tasks.core.storage import Storage


@dataclass(frozen=True)
class Page:
    """One page of rows, the total matching and where the page starts."""

    rows: list[dict[str, Any]]
    total: int
    offset: int
    limit: int

    @property
    def next_offset(self) -> int | None:
        return self.offset + self.limit if self.offset + self.limit < self.total else None

    @property
    def previous_offset(self) -> int | None:
        return max(0, self.offset - self.limit) if self.offset > 0 else None


class Catalog:
    """Named queries over ``curate/samples.parquet`` (view ``samples``), an evaluation
    dataset's ``predictions.parquet`` and the search index's rows."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._con = duckdb.connect()
        self._lock = threading.Lock()  # one connection, queries from the server's threads
        self._views: set[str] = set()

    def _view(self, name: str, uri: str) -> bool:
        """Create view ``name`` over the Parquet file at ``uri`` once; False if it is absent."""
        if name in self._views:
            return True
        if not self.storage.exists(uri):
            return False
        if self.storage.is_s3:
            fs = PyFileSystem(FSSpecHandler(self.storage.fs))
            self._con.register(name, pads.dataset(uri.removeprefix("s3://"), filesystem=fs))
        else:
            self._con.read_parquet(uri).create_view(name)
        self._views.add(name)
        return True

    def _fetch(self, name: str, params: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Rows of ``sql/inspect/<name>.sql``, or of another stage's ``<stage>/<query>``."""
        cursor = run_sql(self._con, name if "/" in name else f"inspect/{name}", params)
        columns = [d[0] for d in cursor.description or ()]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]

    def has_samples(self) -> bool:
        with self._lock:
            return self._samples()

    def _samples(self) -> bool:
        """View ``samples`` and the table macros over it (``sql/inspect/macros.sql``)."""
        if "samples" in self._views:
            return True
        if not self._view("samples", self.storage.uri("curate", "samples.parquet")):
            return False
        self._con.execute(load_sql("inspect/macros"))
        return True

    def query(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The rows of ``sql/inspect/<name>.sql`` (or ``<stage>/<query>``) over ``samples``."""
        with self._lock:
            return self._fetch(name, params) if self._samples() else []

    def page(self, name: str, params: dict[str, Any], offset: int, limit: int) -> Page:
        """One page of ``<name>.sql`` and the count of all its rows, ``<name>_count.sql``
        (a window count over every row would make the page query sort them all)."""
        rows = self.query(name, {**params, "limit": limit, "offset": offset})
        counted = self.query(f"{name}_count", params)
        return Page(rows, int(counted[0]["total"]) if counted else 0, offset, limit)

    def predictions(self, dataset_index: int, dataset: str, name: str,
                    params: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
        """Rows of a query over evaluation dataset number ``dataset_index`` (in config order,
        named ``dataset``): its ``eval/<dataset>/predictions.parquet`` as view
        ``predictions``; empty when it has none."""
        with self._lock:
            view = f"predictions_{dataset_index:d}"
            if not self._view(view, self.storage.uri("eval", dataset, "predictions.parquet")):
                return []
            self._con.execute(f"CREATE OR REPLACE TEMP VIEW predictions AS FROM {view}")
            return self._fetch(name, params)

    def search_rows(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows of a query over the search index's ``eval/search/images.parquet``."""
        with self._lock:
            if not self._view("search_rows", self.storage.uri("eval", "search", "images.parquet")):
                return []
            return self._fetch(name, params)
