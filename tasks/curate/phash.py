"""A 64-bit perceptual hash (DCT pHash), stored as int64 and compared by Hamming distance.

pHash (Zauner 2010, as in the ``imagehash`` package): grey, resize to 32x32, 2-D DCT, keep
the 8x8 lowest frequencies, one bit per coefficient above their median. Re-encoding,
rescaling and small colour shifts move few bits; distinct images differ in ~32.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.fft import dctn

HASH_BYTES = 8


def flatten_alpha(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited onto white (what img2dataset does when resizing)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def phash64(image: Image.Image) -> int:
    """The image's 64-bit pHash as a signed int64 (bit 63 is the top-left DCT coefficient)."""
    grey = flatten_alpha(image).convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    coefficients = dctn(np.asarray(grey, dtype=np.float64), norm="ortho")[:8, :8]
    bits = (coefficients > np.median(coefficients)).ravel()
    return int(np.packbits(bits).view(">i8")[0])


def hashes_to_bytes(hashes: np.ndarray) -> np.ndarray:
    """(n,) int64 hashes -> (n, 8) uint8 codes, the layout FAISS binary indexes take."""
    return np.ascontiguousarray(
        np.asarray(hashes, dtype=">i8").view(np.uint8).reshape(-1, HASH_BYTES)
    )


def hamming(a: int, b: int) -> int:
    """Hamming distance between two int64 hashes."""
    return int(((a ^ b) & 0xFFFFFFFFFFFFFFFF).bit_count())
