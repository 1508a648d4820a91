"""Candidates and crawl errors streamed to Parquet as they are found, in bounded batches.

``crawl/candidates-NNNNN.parquet`` (``url, caption, page_url, source, crawl_time,
caption_original_chars``) holds ``rows_per_file`` rows per file, written ``batch_rows`` at a
time as row groups, and ``crawl/errors.parquet`` (``url, reason, detail, referrer, source``)
one row per page or record that gave nothing. Each file appears atomically once complete.
Captions are truncated to ``max_caption_chars`` (``caption_original_chars`` keeps the length
as found) and exact (url, caption) duplicates dropped, keeping the first: the only state kept
per candidate is a 16-byte digest of the pair (~80 bytes of memory each).
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.storage import Storage

CANDIDATE_SCHEMA = pa.schema(
    [
        ("url", pa.string()),
        ("caption", pa.string()),
        ("page_url", pa.string()),
        ("source", pa.string()),
        ("crawl_time", pa.timestamp("us", tz="UTC")),
        # The caption's length as found, before the cut to max_caption_chars: curate's
        # too-long rule judges this, so a cut caption is not taken for a short one.
        ("caption_original_chars", pa.int64()),
    ]
)
ERROR_SCHEMA = pa.schema(
    [(name, pa.string()) for name in ("url", "reason", "detail", "referrer", "source")]
)
BATCH_ROWS = 10_000
"""Rows buffered before a row group is written: what bounds the writer's memory."""


class CandidateSink(Protocol):
    """Where a crawl hands its pairs and failures as it finds them."""

    def add_pairs(
        self, pairs: Iterable[tuple[str, str]], page_url: str, when: datetime, source: str
    ) -> None:
        """(image url, caption) pairs found on ``page_url`` at ``when``."""

    def add_error(self, error: dict[str, str]) -> None:
        """One page or record that gave nothing: url, reason, detail (referrer, source)."""


class _ParquetFiles:
    """Rows appended in batches to numbered Parquet files of at most ``rows_per_file`` rows,
    each file written to a temporary name and made visible when it is complete."""

    def __init__(
        self, storage: Storage, name: str, schema: pa.Schema, rows_per_file: int, batch_rows: int
    ) -> None:
        self._storage, self._name, self._schema = storage, name, schema
        self._rows_per_file, self._batch_rows = rows_per_file, batch_rows
        self._batch: list[tuple[Any, ...]] = []
        self._file: contextlib.ExitStack | None = None
        self._writer: pq.ParquetWriter | None = None
        self._file_rows = 0
        self.rows_written = 0
        self.uris: list[str] = []

    def append(self, row: tuple[Any, ...]) -> None:
        self._batch.append(row)
        if len(self._batch) >= min(self._batch_rows, self._rows_per_file - self._file_rows):
            self._flush()

    def _flush(self) -> None:
        if self._writer is None:
            self._open_next()
        assert self._writer is not None
        columns = list(zip(*self._batch, strict=True)) or [() for _ in self._schema]
        arrays = [pa.array(c, type=f.type) for f, c in zip(self._schema, columns, strict=True)]
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self._schema))
        self._file_rows += len(self._batch)
        self.rows_written += len(self._batch)
        self._batch = []
        if self._file_rows >= self._rows_per_file:
            self._close_file(None)

    def _open_next(self) -> None:
        uri = self._storage.uri("crawl", self._name.format(n=len(self.uris)))
        self._file = contextlib.ExitStack()
        fh, _ = self._file.enter_context(self._storage.atomic_local_path(uri))
        self._writer = pq.ParquetWriter(fh, self._schema, compression="zstd")
        self._file.callback(self._writer.close)
        self._file_rows = 0
        self.uris.append(uri)

    def _close_file(self, error: BaseException | None) -> None:
        """Finish the open file: made visible, or on ``error`` removed at its temporary name."""
        if self._file is not None:
            self._file.__exit__(type(error) if error else None, error, None)
        self._writer = self._file = None

    def close(self, error: BaseException | None) -> None:
        """Write what is buffered (at least one file, empty if no rows came) and commit the
        open file; on ``error`` discard the open file instead."""
        if error is None and (self._batch or not self.uris):
            self._flush()
        self._close_file(error)


class _ParquetSink:
    """What the sinks below share: their rows go to ``self._rows``, their failures to
    ``self._errors``; as a context manager, both files are committed on leaving (or, on an
    error, discarded), then ``_finish`` runs."""

    _rows: _ParquetFiles
    _errors: _ParquetFiles

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._rows.close(error)
        self._errors.close(error)
        self._finish(error)

    def _finish(self, error: BaseException | None) -> None:
        """After both files are closed: nothing, unless a sink says otherwise."""

    def add_error(self, error: dict[str, str]) -> None:
        self._errors.append(tuple(str(error.get(f.name, "")) for f in ERROR_SCHEMA))


class CandidateWriter(_ParquetSink):
    """A CandidateSink that writes the crawl's candidates and errors as they come (see the
    module docstring); use it as a context manager. ``counts`` after it closes:
    ``pairs_found == pairs_after_dedup + duplicates_dropped``, ``captions_truncated``,
    ``errors_reported``; ``candidate_uris`` lists the candidate files."""

    def __init__(
        self,
        storage: Storage,
        rows_per_file: int,
        max_caption_chars: int,
        batch_rows: int = BATCH_ROWS,
    ) -> None:
        self._storage = storage
        self._max_chars = max_caption_chars
        self._rows = _ParquetFiles(
            storage, "candidates-{n:05d}.parquet", CANDIDATE_SCHEMA, rows_per_file, batch_rows
        )
        self._errors = _ParquetFiles(
            storage, "errors.parquet", ERROR_SCHEMA, sys.maxsize, batch_rows
        )
        self._digests: set[bytes] = set()
        self.counts: Counter[str] = Counter(
            pairs_found=0, pairs_after_dedup=0, duplicates_dropped=0, captions_truncated=0
        )

    def _finish(self, error: BaseException | None) -> None:
        if error is None:
            self.counts["errors_reported"] = self._errors.rows_written
            self._remove_stale_files()

    @property
    def candidate_uris(self) -> list[str]:
        return list(self._rows.uris)

    @property
    def errors_uri(self) -> str:
        return self._storage.uri("crawl", "errors.parquet")

    @property
    def candidates_written(self) -> int:
        """Rows written to the candidate files so far (after dedup)."""
        return self._rows.rows_written

    def add_pairs(
        self, pairs: Iterable[tuple[str, str]], page_url: str, when: datetime, source: str
    ) -> None:
        for url, caption in pairs:
            self.counts["pairs_found"] += 1
            original_chars = len(caption)
            if original_chars > self._max_chars:
                caption = caption[: self._max_chars].rstrip()
                self.counts["captions_truncated"] += 1
            digest = _pair_digest(url, caption)
            if digest in self._digests:
                self.counts["duplicates_dropped"] += 1
                continue
            self._digests.add(digest)
            self.counts["pairs_after_dedup"] += 1
            self._rows.append((url, caption, page_url, source, when, original_chars))

    def _remove_stale_files(self) -> None:
        """Remove higher-numbered candidate files left by an earlier, larger run."""
        for stale in self._storage.glob("crawl/candidates-*.parquet"):
            if stale not in self._rows.uris:
                self._storage.remove(stale)


class PairSpool(_ParquetSink):
    """A CandidateSink that keeps one archive's pairs and errors as found (captions whole,
    no dedup) in ``crawl/_parts/NNNNN-pairs.parquet`` and ``NNNNN-errors.parquet``, so that
    each WAT/WARC file can be read by its own task, anywhere; ``replay_spool`` then hands
    them to the stage's CandidateWriter in file order, which truncates, dedups and numbers
    them exactly as if the file had been read into it. Use it as a context manager."""

    def __init__(self, storage: Storage, index: int, batch_rows: int = BATCH_ROWS) -> None:
        self._rows = _ParquetFiles(
            storage, spool_name(index, "pairs"), CANDIDATE_SCHEMA, sys.maxsize, batch_rows
        )
        self._errors = _ParquetFiles(
            storage, spool_name(index, "errors"), ERROR_SCHEMA, sys.maxsize, batch_rows
        )

    def add_pairs(
        self, pairs: Iterable[tuple[str, str]], page_url: str, when: datetime, source: str
    ) -> None:
        for url, caption in pairs:
            self._rows.append((url, caption, page_url, source, when, len(caption)))


SPOOL_FOLDER = "_parts"


def spool_name(index: int, kind: str) -> str:
    """A spool file's name under ``crawl/`` (one file, so no ``{n}`` in it)."""
    return f"{SPOOL_FOLDER}/{index:05d}-{kind}.parquet"


def replay_spool(storage: Storage, index: int, sink: CandidateSink) -> None:
    """Hand archive ``index``'s spooled pairs, then its errors, to ``sink`` in their order,
    a row group at a time."""
    for kind in ("pairs", "errors"):
        uri = storage.uri("crawl", spool_name(index, kind))
        with storage.open(uri) as fh:
            for batch in pq.ParquetFile(fh).iter_batches():
                for row in batch.to_pylist():
                    if kind == "pairs":
                        sink.add_pairs([(row["url"], row["caption"])], row["page_url"],
                                       row["crawl_time"], row["source"])  # fmt: skip
                    else:
                        sink.add_error(row)


def _pair_digest(url: str, caption: str) -> bytes:
    # The length prefix keeps ("ab", "c") and ("a", "bc") apart.
    key = f"{len(url)}:{url}{caption}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(key, digest_size=16).digest()
