"""A 64-bit perceptual hash (DCT pHash), stored as 8 big-endian bytes and compared by Hamming
distance.

Bytes, not an integer column: a reader that turns a nullable integer column into floats
(pandas does, for rows without an image) would silently drop the low bits of a 64-bit hash.

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
    """The image's 64-bit pHash as an unsigned int (bit 63 is the top-left DCT coefficient)."""
    grey = flatten_alpha(image).convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    coefficients = dctn(np.asarray(grey, dtype=np.float64), norm="ortho")[:8, :8]
    bits = (coefficients > np.median(coefficients)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def phash_bytes(image: Image.Image) -> bytes:
    """The image's pHash as stored: HASH_BYTES big-endian bytes."""
    return phash64(image).to_bytes(HASH_BYTES, "big")


def hashes_to_bytes(hashes: np.ndarray) -> np.ndarray:
    """(n,) 64-bit hashes (signed or unsigned) -> (n, 8) uint8 codes, big-endian, the layout
    FAISS binary indexes take."""
    unsigned = np.asarray(hashes).astype(np.uint64)
    return np.ascontiguousarray(unsigned.astype(">u8").view(np.uint8).reshape(-1, HASH_BYTES))


def hamming(a: int, b: int) -> int:
    """Hamming distance between two 64-bit hashes."""
    return int(((a ^ b) & 0xFFFFFFFFFFFFFFFF).bit_count())
