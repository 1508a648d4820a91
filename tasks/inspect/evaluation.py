"""What the inspect app shows of the curate rules and the evaluate stage: each rule's
thresholds (from config), evaluation results, per-class rows, and where an evaluation
image lives (its dataset's tars, found from config, never from a request path)."""

from __future__ import annotations

import csv
import io
import posixpath
import threading
from typing import Any

from model.eval_data import shard_urls
from tasks.core.config import CurateConfig, EvalDataset, PipelineConfig
from tasks.core.storage import Storage
from tasks.inspect.images import TarImages

RULE_THRESHOLDS: dict[str, tuple[str, ...]] = {
    "caption_too_short": ("min_caption_chars", "min_caption_words"),
    "caption_too_long": ("max_caption_chars",),
    "caption_boilerplate": (
        "boilerplate_captions",
        "boilerplate_filename_pattern",
        "boilerplate_filename_max_words",
    ),
    "image_too_small": ("min_image_side",),
    "aspect_ratio": ("max_aspect_ratio",),
    "language": (
        "allowed_languages",
        "min_allowed_language_probability",
        "min_allowed_language_probability_short",
        "language_short_words",
        "language_min_chars",
    ),
    "url_blocked": ("url_blocklist",),
    "clip_score": ("clip_score_min", "clip_score_top_fraction"),
    "eval_contamination": (
        "decontaminate",
        "near_dup_min_similarity",
        "near_dup_band_min_similarity",
    ),
    "near_duplicate": (
        "near_dup_min_similarity",
        "near_dup_max_distance_ratio",
        "near_dup_ratio_rank",
        "near_dup_band_min_similarity",
        "near_dup_max_residual_concentration",
        "near_dup_band_max_distance_ratio",
        "near_dup_local_max_share",
        "near_dup_local_min_residual",
        "near_dup_local_min_border",
    ),
    "semantic_duplicate": ("semantic_dedup_eps",),
}
"""The curate config fields that decide each rule (rules without any are facts: a failed
download, an exact duplicate)."""


def rule_thresholds(cfg: CurateConfig, rule: str) -> dict[str, Any]:
    """{field: configured value} of the fields that decide ``rule``."""
    return {name: getattr(cfg, name) for name in RULE_THRESHOLDS.get(rule, ())}


class Evaluation:
    """The evaluate stage's outputs and the configured datasets' images."""

    def __init__(self, cfg: PipelineConfig, storage: Storage, images: TarImages) -> None:
        self.cfg = cfg
        self.storage = storage
        self.images = images
        self._tars: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def results(self) -> list[dict[str, Any]]:
        uri = self.storage.uri("eval", "results.json")
        return list(self.storage.read_json(uri)["results"]) if self.storage.exists(uri) else []

    def dataset(self, name: str) -> tuple[int, EvalDataset] | None:
        """(position in config, spec) of a configured dataset, or None."""
        for i, spec in enumerate(self.cfg.evaluate.datasets):
            if spec.name == name:
                return i, spec
        return None

    def per_class(self, name: str) -> list[dict[str, str]]:
        uri = self.storage.uri("eval", name, "per_class.csv")
        if not self.storage.exists(uri):
            return []
        return list(csv.DictReader(io.StringIO(self.storage.read_bytes(uri).decode())))

    def _options(self, spec: EvalDataset) -> dict[str, Any]:
        return self.storage.storage_options() if spec.path.startswith("s3://") else {}

    def tars(self, spec: EvalDataset) -> dict[str, str]:
        """tar file name -> URI of the dataset's test split, listed once."""
        with self._lock:
            if spec.name not in self._tars:
                urls = shard_urls(spec.path, spec.split, self._options(spec))
                self._tars[spec.name] = {posixpath.basename(u): u for u in urls}
            return self._tars[spec.name]

    def image(self, spec: EvalDataset, key: str, tar: str | None = None) -> bytes | None:
        """An evaluation image by sample key, in the named tar or searched in every tar of
        the split (each tar's headers are read once, then cached)."""
        tars = self.tars(spec)
        candidates = [tars[tar]] if tar in tars else [] if tar else list(tars.values())
        for uri in candidates:
            if key in self.images.index(uri):
                return self.images.image(uri, key)
        return None
