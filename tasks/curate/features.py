"""Per-shard curation features: one download shard (parquet + tar) in, one small parquet out.

For every row of ``{root}/download/NNNNN.parquet`` this decodes the caption (flagging
invalid UTF-8), normalises it, identifies its language, and, for the images in the shard's
tar, records whether the image is usable, its decoded size, its 64-bit pHash (8 bytes), its
matching thumbnails (``thumb``: what near-duplicate detection compares, see
``tasks.curate.near_dup``) and the sha256 of its bytes (``image_sha256``: what the shard stage
checks every image it copies against).
Nothing is decided here: rules run later, in SQL, on the whole table.

img2dataset's ``sha256`` column is the hash of the file as fetched, before it was resized and
re-encoded, so it cannot be checked against the tar's bytes; it is checked against the
``sha256`` in the tar's own ``.json`` for the sample instead, which catches a tar and a
parquet from different download runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from model.tario import IMAGE_EXTENSIONS, TarReadError, iter_members, split_name
from tasks.core.config import PipelineConfig
from tasks.core.hosts import canonical_host
from tasks.core.storage import Storage
from tasks.curate.captions import caption_word_count, normalise_caption
from tasks.curate.clip_score import BATCH, ClipScorer, clip_scorer
from tasks.curate.language import read_language
from tasks.curate.near_dup import THUMB_BYTES, image_thumbnail
from tasks.curate.phash import HASH_BYTES, flatten_alpha, phash_bytes

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("key", "url", "status", "original_width", "original_height")
"""Download parquet columns curate cannot do without; img2dataset writes them all. Without the
original sizes the size and aspect rules could judge no row and would keep every one."""
PASSTHROUGH_COLUMNS = {
    "key": pa.string(),
    "url": pa.string(),
    "page_url": pa.string(),
    "source": pa.string(),
    "caption_original_chars": pa.int64(),
    "status": pa.string(),
    "error_message": pa.string(),
    "width": pa.int64(),
    "height": pa.int64(),
    "original_width": pa.int64(),
    "original_height": pa.int64(),
    "sha256": pa.string(),
}
FEATURE_SCHEMA = pa.schema(
    [
        *[pa.field(name, kind) for name, kind in PASSTHROUGH_COLUMNS.items()],
        pa.field("caption", pa.string()),
        pa.field("caption_invalid_utf8", pa.bool_()),
        pa.field("caption_norm", pa.string()),
        pa.field("caption_words", pa.int64()),
        pa.field("url_host", pa.string()),
        pa.field("page_host", pa.string()),
        pa.field("language", pa.string()),
        pa.field("language_confidence", pa.float64()),
        pa.field("language_allowed_probability", pa.float64()),
        pa.field("download_shard", pa.string()),
        pa.field("row_in_shard", pa.int64()),
        pa.field("image_state", pa.string()),
        pa.field("image_bytes", pa.int64()),
        pa.field("image_width", pa.int64()),
        pa.field("image_height", pa.int64()),
        pa.field("phash", pa.binary(HASH_BYTES)),
        pa.field("thumb", pa.binary(THUMB_BYTES)),
        pa.field("image_sha256", pa.string()),
        pa.field("clip_score", pa.float64()),
    ]
)


def language_columns(
    captions: list[str | None], allowed_languages: list[str]
) -> dict[str, list[Any]]:
    """``language``, ``language_confidence`` and ``language_allowed_probability`` of each
    caption (``tasks.curate.language.read_language``)."""
    allowed = frozenset(allowed_languages)
    readings = [read_language(text, allowed) for text in captions]
    return {
        "language": [r.language for r in readings],
        "language_confidence": [r.confidence for r in readings],
        "language_allowed_probability": [r.allowed_probability for r in readings],
    }


class DownloadMismatchError(ValueError):
    """A download tar and its parquet that disagree about a sample; the message names it."""


@dataclass(frozen=True)
class ShardJob:
    """One unit of mapped work: a download shard's parquet and where its features go."""

    config: PipelineConfig
    parquet_uri: str
    part_uri: str


OnImage = Callable[[Image.Image], None]


class ImageEmbedder:
    """Collects CLIP image embeddings while a tar streams by, a batch at a time (a whole
    shard of decoded images would not fit in memory)."""

    def __init__(self, scorer: ClipScorer) -> None:
        self.scorer = scorer
        self.embeddings: dict[str, np.ndarray] = {}
        self._pending: list[tuple[str, Image.Image]] = []

    def add(self, key: str, image: Image.Image) -> None:
        self._pending.append((key, flatten_alpha(image)))
        if len(self._pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            vectors = self.scorer.image_embeddings([image for _, image in self._pending])
            self.embeddings |= dict(zip((k for k, _ in self._pending), vectors, strict=True))
            self._pending = []


@dataclass(frozen=True)
class ImageInfo:
    state: str
    """'ok' | 'empty' | 'undecodable'"""
    size_bytes: int
    width: int | None = None
    height: int | None = None
    phash: bytes | None = None
    thumb: bytes | None = None
    sha256: str | None = None


@dataclass
class TarImages:
    """What one download tar holds, as far as it could be read."""

    infos: dict[str, ImageInfo] = field(default_factory=dict)
    """key -> its image."""
    recorded_sha256: dict[str, str] = field(default_factory=dict)
    """key -> the ``sha256`` its ``.json`` member records (img2dataset's hash of the fetch)."""
    problem: str | None = None
    """None, 'missing' (no tar) or 'truncated' (members after the cut are lost)."""


def url_host(url: str | None) -> str | None:
    """The host of a URL (no user info, no port) as the resolver spells it
    (``tasks.core.hosts.canonical_host``), None when it has none or no resolver accepts it."""
    if not url:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:  # e.g. an invalid IPv6 literal: no host the blocklist could match
        return None
    return canonical_host(host) if host else None


def decode_caption(raw: bytes | None) -> tuple[str | None, bool]:
    """(text, invalid_utf8). Invalid bytes, or U+FFFD left by an earlier lossy decode, flag it."""
    if raw is None:
        return None, False
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True
    return text, "\ufffd" in text


def inspect_image(data: bytes, on_image: OnImage | None = None) -> ImageInfo:
    """Decode one image fully (a truncated JPEG fails here, not later in training);
    ``on_image`` sees every decodable image."""
    sha256 = hashlib.sha256(data).hexdigest()
    if not data:
        return ImageInfo("empty", 0, sha256=sha256)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height = image.size
            if width == 0 or height == 0:
                return ImageInfo("empty", len(data), sha256=sha256)
            if on_image is not None:
                on_image(image)
            return ImageInfo(
                "ok", len(data), width, height, phash_bytes(image), image_thumbnail(image), sha256
            )
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return ImageInfo("undecodable", len(data), sha256=sha256)


def read_tar_images(
    storage: Storage, tar_uri: str, embedder: ImageEmbedder | None = None
) -> TarImages:
    """Inspect every image member of a shard tar, streaming, and note each sample's recorded
    sha256; a missing or truncated tar is a ``problem``, not an error."""
    found = TarImages()
    if not storage.exists(tar_uri):
        log.warning("%s: shard tar missing; its downloaded images count as missing", tar_uri)
        found.problem = "missing"
        return found
    try:
        with storage.open(tar_uri, "rb") as fh:
            for name, data in iter_members(fh, tar_uri):
                key, ext = split_name(name) or (name, "")
                if ext in IMAGE_EXTENSIONS:
                    on_image = partial(embedder.add, key) if embedder is not None else None
                    found.infos[key] = inspect_image(data, on_image)
                elif ext == "json":
                    found.recorded_sha256 |= _recorded_sha256(key, data)
    except TarReadError as e:
        # Only a tar whose bytes end early or are not a tar is a data problem. Any other
        # OSError (a reset connection, an S3 error) propagates, so the task is retried
        # instead of dropping the shard's samples for good.
        log.warning("%s: truncated or corrupt after %d images (%s)", tar_uri, len(found.infos), e)
        found.problem = "truncated"
    return found


def _recorded_sha256(key: str, data: bytes) -> dict[str, str]:
    """{key: sha256} from a sample's img2dataset ``.json``, empty when it records none."""
    try:
        sha256 = json.loads(data).get("sha256")
    except (ValueError, AttributeError):
        return {}
    return {key: sha256} if isinstance(sha256, str) else {}


def check_recorded_sha256(
    parquet_uri: str, tar_uri: str, columns: dict[str, list[Any]], recorded: dict[str, str]
) -> None:
    """Refuse a sample whose parquet ``sha256`` differs from its tar ``.json``'s: the two
    files come from different download runs (keys are positional, so images would be paired
    with other URLs' captions)."""
    for key, url, sha256 in zip(columns["key"], columns["url"], columns["sha256"], strict=True):
        in_tar = recorded.get(key)
        if sha256 is not None and in_tar is not None and sha256 != in_tar:
            raise DownloadMismatchError(
                f"{tar_uri}: sample {key!r} ({url}): its .json records sha256 {in_tar}, "
                f"{parquet_uri} records {sha256}: the tar and the parquet come from different "
                "download runs; rerun download"
            )


def read_shard_rows(storage: Storage, parquet_uri: str) -> pa.Table:
    """The shard parquet, with a clear error naming the file when it cannot be used."""
    try:
        with storage.open(parquet_uri, "rb") as fh:
            table = pq.read_table(fh)
    except Exception as e:
        raise ValueError(f"{parquet_uri}: unreadable download shard parquet: {e}") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{parquet_uri}: download shard parquet lacks columns {missing}")
    return table


def _column(table: pa.Table, name: str, kind: pa.DataType) -> list[Any]:
    if name not in table.column_names:
        return [None] * table.num_rows
    return table.column(name).cast(kind).to_pylist()


def shard_features(
    storage: Storage,
    parquet_uri: str,
    allowed_languages: list[str],
    scorer: ClipScorer | None = None,
) -> tuple[pa.Table, np.ndarray | None]:
    """The feature table (FEATURE_SCHEMA) of one download shard, one row per parquet row,
    and with a scorer the (rows, d) image embeddings (NaN rows where no image decoded).
    ``language_allowed_probability`` is of ``allowed_languages`` (features are computed on
    every curate run, so a changed list is always read afresh).

    Rows are in key order (``row_in_shard`` keeps each one's place in the parquet, which
    img2dataset writes as downloads finish): the order keys were handed out, so a rerun of
    the same download numbers rows alike, and the rules' duplicate-key check finds the
    table in order (sql/curate/rules.sql)."""
    table = read_shard_rows(storage, parquet_uri)
    shard_name = posixpath.basename(parquet_uri).removesuffix(".parquet")
    tar_uri = parquet_uri.removesuffix(".parquet") + ".tar"
    embedder = ImageEmbedder(scorer) if scorer is not None else None
    images = read_tar_images(storage, tar_uri, embedder)
    columns: dict[str, list[Any]] = {
        name: _column(table, name, kind) for name, kind in PASSTHROUGH_COLUMNS.items()
    }
    check_recorded_sha256(parquet_uri, tar_uri, columns, images.recorded_sha256)
    raw_captions = _column(table, "caption", pa.binary())
    decoded = [decode_caption(raw) for raw in raw_captions]
    columns["caption"] = [text for text, _ in decoded]
    columns["caption_invalid_utf8"] = [bad for _, bad in decoded]
    columns["caption_norm"] = [normalise_caption(text) for text, _ in decoded]
    columns["caption_words"] = [caption_word_count(n) for n in columns["caption_norm"]]
    columns["url_host"] = [url_host(u) for u in columns["url"]]
    columns["page_host"] = [url_host(u) for u in columns["page_url"]]
    columns |= language_columns(columns["caption"], allowed_languages)
    columns["download_shard"] = [f"{shard_name}.tar"] * table.num_rows
    columns["row_in_shard"] = list(range(table.num_rows))
    infos = [
        _row_image(key, status, images.infos, images.problem)
        for key, status in zip(columns["key"], columns["status"], strict=True)
    ]
    columns["image_state"] = [info.state if info else "not_downloaded" for info in infos]
    columns["image_bytes"] = [info.size_bytes if info else None for info in infos]
    columns["image_width"] = [info.width if info else None for info in infos]
    columns["image_height"] = [info.height if info else None for info in infos]
    columns["phash"] = [info.phash if info else None for info in infos]
    columns["thumb"] = [info.thumb if info else None for info in infos]
    columns["image_sha256"] = [info.sha256 if info else None for info in infos]
    columns["clip_score"], embeddings = _clip_columns(embedder, columns, infos)
    features = pa.table(columns, schema=FEATURE_SCHEMA)
    order = pc.sort_indices(features, [("key", "ascending", "at_end")])  # stable
    return features.take(order), None if embeddings is None else embeddings[order.to_numpy()]


def _clip_columns(
    embedder: ImageEmbedder | None, columns: dict[str, list[Any]], infos: list[ImageInfo | None]
) -> tuple[list[float | None], np.ndarray | None]:
    """clip_score per row (images that decoded, captions present) and the embedding matrix."""
    n = len(infos)
    if embedder is None:
        return [None] * n, None
    embedder.flush()
    scored = [
        i for i, (key, info, caption) in enumerate(zip(columns["key"], infos, columns["caption"],
                                                       strict=True))
        if info is not None and info.state == "ok" and key in embedder.embeddings
        and caption is not None and caption.strip()
    ]  # fmt: skip
    dim = next(iter(embedder.embeddings.values())).shape[0] if embedder.embeddings else 0
    embeddings = np.full((n, dim), np.nan, np.float32)
    for i, (key, info) in enumerate(zip(columns["key"], infos, strict=True)):
        if info is not None and info.state == "ok" and key in embedder.embeddings:
            embeddings[i] = embedder.embeddings[key]
    scores: list[float | None] = [None] * n
    if scored:
        text = embedder.scorer.text_embeddings([columns["caption"][i] for i in scored])
        for i, value in zip(scored, (embeddings[scored] * text).sum(axis=1), strict=True):
            scores[i] = float(value)
    return scores, embeddings


def _row_image(
    key: str | None, status: str | None, images: dict[str, ImageInfo], problem: str | None
) -> ImageInfo | None:
    if status != "success":
        return None
    if key is not None and key in images:
        return images[key]
    return ImageInfo("shard_truncated" if problem == "truncated" else "missing", 0)


def embeddings_uri(part_uri: str) -> str:
    """Where a part's (rows, d) CLIP image embeddings go, beside its features."""
    return part_uri.removesuffix(".parquet") + ".emb.npy"


def curate_shard(job: ShardJob) -> str:
    """Compute one shard's features and write them to ``job.part_uri``; returns that URI."""
    storage = Storage(job.config.storage)
    curate_cfg = job.config.curate
    scorer = (
        clip_scorer(curate_cfg.clip_score_checkpoint, curate_cfg.clip_score_model)
        if curate_cfg.clip_score_checkpoint
        else None
    )
    features, embeddings = shard_features(
        storage, job.parquet_uri, curate_cfg.allowed_languages, scorer
    )
    with storage.atomic_local_path(job.part_uri) as (fh, _):
        pq.write_table(features, fh)
    if embeddings is not None:
        with storage.atomic_local_path(embeddings_uri(job.part_uri)) as (fh, _):
            np.save(fh, embeddings)
    log.info("%s: %d rows -> %s", job.parquet_uri, features.num_rows, job.part_uri)
    return job.part_uri
