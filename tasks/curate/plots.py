"""The curate report's PNG plots: the funnel, caption-length and image-size histograms,
examples of dropped duplicates beside the image each duplicates, and the near-duplicate
candidate pairs closest to the threshold (``near_duplicates.png``)."""

from __future__ import annotations

import io
import logging
import os
from typing import Any

import duckdb
import matplotlib

matplotlib.use("Agg")  # no display on workers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from model.tario import TarReadError, is_image, iter_members  # noqa: E402
from tasks.core.sql import run_sql  # noqa: E402
from tasks.core.storage import Storage  # noqa: E402

log = logging.getLogger(__name__)

DUPLICATE_EXAMPLES = 6
NEAR_THRESHOLD_EXAMPLES = 6
"""Pairs shown on each side of the near-duplicate threshold."""


def write_plots(
    con: duckdb.DuckDBPyConnection, storage: Storage, summary: dict[str, Any], out_dir: str
) -> dict[str, str]:
    """Draw every plot into ``out_dir``; returns {name: local PNG path}."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "funnel": plot_funnel(summary, os.path.join(out_dir, "funnel.png")),
        **plot_histograms(con, out_dir),
        "duplicates": plot_duplicates(con, storage, os.path.join(out_dir, "duplicates.png")),
        "near_duplicates": plot_near_threshold(
            con, storage, os.path.join(out_dir, "near_duplicates.png")
        ),
    }
    return paths


def plot_funnel(summary: dict[str, Any], path: str) -> str:
    """Rows remaining after each rule that dropped any (input at the top, kept at the end)."""
    steps = [s for s in summary["funnel"] if s["step"] == "input" or s["dropped"] > 0]
    labels = [f"{s['step']} (-{s['dropped']})" if s["dropped"] else s["step"] for s in steps]
    labels.append("kept")
    values = [s["remaining"] for s in steps] + [summary["kept"]]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(values) + 1.2))
    ax.barh(range(len(values)), values, color=["#4c72b0"] * (len(values) - 1) + ["#55a868"])
    ax.set_yticks(range(len(values)), labels)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v}", va="center")
    ax.set_xlabel("samples remaining")
    ax.set_title(f"curate funnel: {summary['input']} in, {summary['kept']} kept")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_histograms(con: duckdb.DuckDBPyConnection, out_dir: str) -> dict[str, str]:
    """Caption length (characters) and image size (shorter original side, pixels), for
    downloaded rows and kept rows."""
    frame = run_sql(con, "curate/histograms").df()
    paths = {}
    for name, column, xlabel in (
        ("caption_length", "caption_chars", "caption length (characters)"),
        ("image_size", "min_side", "shorter side of the original image (pixels)"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4))
        downloaded = frame[column].dropna()
        kept = frame.loc[frame["keep"], column].dropna()
        bins = 40 if len(downloaded) else 1
        ax.hist(downloaded, bins=bins, alpha=0.6, label=f"downloaded ({len(downloaded)})")
        ax.hist(kept, bins=bins, alpha=0.6, label=f"kept ({len(kept)})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("samples")
        ax.legend()
        fig.tight_layout()
        paths[name] = os.path.join(out_dir, f"{name}.png")
        fig.savefig(paths[name], dpi=100)
        plt.close(fig)
    return paths


def _images(storage: Storage, wanted: list[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
    """The image bytes of each (download shard, key), one pass over each shard tar."""
    by_shard: dict[str, set[str]] = {}
    for shard, key in wanted:
        by_shard.setdefault(shard, set()).add(key)
    images: dict[tuple[str, str], bytes] = {}
    for shard, keys in by_shard.items():
        images |= {(shard, k): v for k, v in read_members(storage, shard, keys).items()}
    return images


def plot_duplicates(con: duckdb.DuckDBPyConnection, storage: Storage, path: str) -> str:
    """Each row: a dropped duplicate and the kept image it duplicates, with keys and reason."""
    pairs = run_sql(con, "curate/duplicate_examples", {"limit": DUPLICATE_EXAMPLES}).fetchall()
    images = _images(storage, [(p[1], p[0]) for p in pairs] + [(p[4], p[3]) for p in pairs])
    fig, axes = plt.subplots(max(1, len(pairs)), 2, figsize=(5, 2.4 * max(1, len(pairs))),
                             squeeze=False)  # fmt: skip
    for ax in axes.ravel():
        ax.axis("off")
    if not pairs:
        axes[0][0].text(0, 0.5, "no duplicates found", fontsize=12)
    for row, (d_key, d_shard, reasons, k_key, k_shard) in enumerate(pairs):
        dup_reason = next((r for r in reasons if "duplicate" in r), reasons[0] if reasons else "")
        for col, (shard, key, title) in enumerate(
            ((d_shard, d_key, f"dropped {d_key}\n{dup_reason}"), (k_shard, k_key, f"kept {k_key}"))
        ):
            data = images.get((shard, key))
            if data is not None:
                with Image.open(io.BytesIO(data)) as image:
                    axes[row][col].imshow(image.convert("RGB"))
            axes[row][col].set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_near_threshold(con: duckdb.DuckDBPyConnection, storage: Storage, path: str) -> str:
    """Each row: a near-duplicate candidate pair and its similarity, the closest to the
    threshold on either side (verified: dropped; rejected: both kept), then the most similar
    pairs the local-difference veto refused (both kept)."""
    pairs = run_sql(con, "curate/near_threshold_pairs", {"limit": NEAR_THRESHOLD_EXAMPLES})
    rows = pairs.fetchall()
    images = _images(storage, [(r[1], r[0]) for r in rows] + [(r[3], r[2]) for r in rows])
    fig, axes = plt.subplots(max(1, len(rows)), 2, figsize=(4.4, 2.0 * max(1, len(rows))),
                             squeeze=False)  # fmt: skip
    for ax in axes.ravel():
        ax.axis("off")
    if not rows:
        axes[0][0].text(0, 0.5, "no near-duplicate candidates", fontsize=12)
    for row, (key_a, shard_a, key_b, shard_b, similarity, verified, vetoed) in enumerate(rows):
        verdict = "near duplicate" if verified else "kept apart"
        verdict += " (local difference)" if vetoed else ""
        for col, (shard, key) in enumerate(((shard_a, key_a), (shard_b, key_b))):
            data = images.get((shard, key))
            if data is not None:
                with Image.open(io.BytesIO(data)) as image:
                    axes[row][col].imshow(image.convert("RGB"))
            title = f"{key}\n{verdict} {similarity:.4f}" if col == 0 else key
            axes[row][col].set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def read_members(storage: Storage, shard_tar: str, keys: set[str]) -> dict[str, bytes]:
    """Image bytes of ``keys`` from one download shard tar (stops at a truncated end)."""
    found: dict[str, bytes] = {}
    uri = storage.uri("download", shard_tar)

    def wanted(name: str) -> bool:
        return is_image(name) and name.partition(".")[0] in keys

    try:
        with storage.open(uri, "rb") as fh:
            for name, data in iter_members(fh, uri, wanted):
                found[name.partition(".")[0]] = data
                if len(found) == len(keys):
                    break
    except (TarReadError, OSError) as e:
        log.warning("%s: could not read example images (%s)", uri, e)
    return found
