"""Near-duplicate matching: nearest-view candidates, then verification by aligned correlation.

Every image becomes one small colour thumbnail (``image_thumbnail``): transparency composited
onto white, uniform borders (padding, letterboxing, plain backgrounds) trimmed away, the rest
resized to THUMB x THUMB. Two thumbnails are compared in two steps:

1. **Candidates.** Each thumbnail's coarse view (CANDIDATE_GRID^2 colour pixels, centred and
   L2-normalised, so an inner product is a Pearson correlation) goes into an
   inner-product search; every image asks for its ``candidate_k`` nearest neighbours and
   keeps those above ``candidate_min_similarity``. Cost: n * k pairs, searched exactly (matrix
   products, ties broken by the lower id) up to ``flat_max_rows`` views and with a FAISS IVF
   index beyond.
2. **Verification.** A candidate pair is a duplicate only when the best Pearson correlation
   between one image's full view and a window of the other (63 windows keeping 92-100 % of
   each side at offsets a quarter of the slack apart, so crops align) reaches
   ``min_similarity``, and when the pair stands out from the crowd (a ratio test, as in SIFT
   matching): its distance (1 - similarity) is at most ``max_distance_ratio`` times each
   image's distance to its ``ratio_rank``-th closest other candidate. Thousands of plain
   t-shirts at 28 px correlate as well as a re-encoded copy does, but a copy is far closer to
   its original than to any look-alike. The correlation runs over all three colour channels
   at once, centred by one scalar: brightness and contrast changes (c -> a*c + b, the same a
   and b in every channel) leave it unchanged, while a colour change (a red and a blue copy
   of one shape) lowers it. Colour is compared blurred (JPEG keeps it at half resolution)
   and brightness sharp.

Thresholds come from CurateConfig and were calibrated with ``bench/bench_dedup_quality.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
from PIL import Image
from scipy.ndimage import uniform_filter

from tasks.curate.faiss_device import FaissDevice, on_device
from tasks.curate.flat_knn import flat_neighbours
from tasks.curate.phash import flatten_alpha

THUMB = 32
"""Side of the stored thumbnails (pixels)."""
VIEWS = 2
"""Views per image: the whole image, and the image with its uniform borders trimmed."""
THUMB_BYTES = VIEWS * THUMB * THUMB * 3
THUMBNAIL_VERSION = 1
"""Bumped whenever ``image_thumbnail`` changes what it stores (cached thumbnails expire)."""
CANDIDATE_GRID = 8
VERIFY_GRID = 16
_BORDER_TOLERANCE = 40
"""A pixel differs from the border colour when one channel differs by more (of 255)."""
_BORDER_UNIFORM = 0.8
"""Trim only when this share of the edge pixels has the border colour."""
_WINDOW_SIDES = (1.0, 0.96, 0.92)
_WINDOW_OFFSETS = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Windows keep 92-100 % of each side, a quarter of the slack apart: crops of 80-95 % of the
area land within about 2 % of the side of one (coarser steps, 88-100 % at three offsets,
missed a third of the crops at 64 and 224 px)."""
_CHUNK = 128
"""Images whose windows are computed at once ((CHUNK, W, D) float32: ~25 MiB)."""
_YCBCR = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32
)
"""RGB -> (Y, Cb, Cr) with chroma centred on grey (JPEG's matrix, without its offsets)."""
_RGB = np.linalg.inv(_YCBCR).astype(np.float32)
_CHROMA_BLUR = 6
"""Box filter (thumbnail pixels) over the chroma channels before verification: JPEG stores
colour at half resolution, which at 28 px smears colour edges over several pixels."""


@dataclass(frozen=True)
class MatchConfig:
    """Thresholds of the matcher (from CurateConfig ``near_dup_*``)."""

    min_similarity: float
    candidate_k: int
    candidate_min_similarity: float
    max_distance_ratio: float = 1.0
    ratio_rank: int = 2
    flat_max_rows: int = 50_000
    ivf_nprobe: int = 16
    faiss_device: FaissDevice = "auto"


def _uniform(line: np.ndarray, colour: np.ndarray) -> bool:
    """Whether a row or column of pixels (k, 3) is (nearly all) ``colour``."""
    close = np.abs(line.astype(np.int16) - colour).max(axis=1) <= _BORDER_TOLERANCE
    return bool(close.mean() >= _BORDER_UNIFORM)


def _trim_once(pixels: np.ndarray) -> np.ndarray:
    """Strip rows and columns of the corners' colour from every side (as ``convert -trim``
    with a fuzz does); the picture's first non-uniform lines stay."""
    h, w = pixels.shape[:2]
    corners = np.stack([pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]])
    colour = np.median(corners.astype(np.int16), axis=0)
    top, bottom, left, right = 0, h, 0, w
    while bottom - top > 2 and _uniform(pixels[top, left:right], colour):
        top += 1
    while bottom - top > 2 and _uniform(pixels[bottom - 1, left:right], colour):
        bottom -= 1
    while right - left > 2 and _uniform(pixels[top:bottom, left], colour):
        left += 1
    while right - left > 2 and _uniform(pixels[top:bottom, right - 1], colour):
        right -= 1
    if bottom - top <= 2 or right - left <= 2:  # a blank image: nothing to trim to
        return pixels
    return pixels[top:bottom, left:right]


def trim_borders(pixels: np.ndarray, passes: int = 3) -> np.ndarray:
    """(h, w, 3) uint8 without uniform borders: a letterbox of one colour around a picture
    with a background of another comes off in two passes."""
    for _ in range(passes):
        trimmed = _trim_once(pixels)
        if trimmed.shape == pixels.shape:
            break
        pixels = trimmed
    return pixels


def _thumb(pixels: np.ndarray) -> np.ndarray:
    resized = Image.fromarray(pixels).resize((THUMB, THUMB), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def image_thumbnail(image: Image.Image) -> bytes:
    """The image's matching views, VIEWS x THUMB x THUMB x 3 uint8 (THUMB_BYTES bytes): the
    whole image, and the image with its uniform borders trimmed."""
    pixels = np.asarray(flatten_alpha(image), dtype=np.uint8)
    return np.stack([_thumb(pixels), _thumb(trim_borders(pixels))]).tobytes()


def thumbnails_array(blobs: list[bytes]) -> np.ndarray:
    """THUMB_BYTES blobs -> (n, VIEWS, THUMB, THUMB, 3) float32."""
    flat = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    return flat.reshape(len(blobs), VIEWS, THUMB, THUMB, 3).astype(np.float32)


def _normalised(x: np.ndarray) -> np.ndarray:
    """Rows centred by their own mean and scaled to unit length (blank rows stay zero)."""
    x = (x - x.mean(axis=-1, keepdims=True)).astype(np.float32, copy=False)
    x /= np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
    return x


def _verification_space(thumbs: np.ndarray) -> np.ndarray:
    """(m, T, T, 3) RGB -> (m, T, T, 3) RGB with the colour (Cb, Cr) blurred by _CHROMA_BLUR
    and the brightness (Y) kept sharp."""
    ycc = thumbs @ _YCBCR.T
    ycc[..., 1:] = uniform_filter(ycc[..., 1:], size=(1, _CHROMA_BLUR, _CHROMA_BLUR, 1),
                                  mode="nearest")  # fmt: skip
    return ycc @ _RGB.T


def _area_matrix(start: float, side: float, grid: int) -> np.ndarray:
    """(grid, THUMB) weights: cell g averages the thumbnail over its share of the span
    [start, start + side) (fractions of the side), so sampling does not alias."""
    edges = (start + side * np.arange(grid + 1) / grid) * THUMB
    pixel_lo = np.arange(THUMB)[None, :]
    overlap = np.clip(
        np.minimum(edges[1:, None], pixel_lo + 1) - np.maximum(edges[:-1, None], pixel_lo), 0, None
    )
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def _window_spans() -> tuple[np.ndarray, np.ndarray]:
    """The windows, as (S, G, THUMB) area matrices of every span along one axis and the
    (W, 2) indices of the (vertical, horizontal) span of each window: a square crop (one
    side on both axes, every pair of offsets), or a crop of one axis (an aspect change: the
    other axis whole, the cropped one at its start, centre or end)."""
    spans = sorted({((1 - s) * o, s) for s in _WINDOW_SIDES for o in _WINDOW_OFFSETS})
    index = {span: i for i, span in enumerate(spans)}

    def at(side: float, offset: float) -> int:
        return index[((1 - side) * offset, side)]

    pairs = {(at(s, oy), at(s, ox)) for s in _WINDOW_SIDES
             for oy in _WINDOW_OFFSETS for ox in _WINDOW_OFFSETS}  # fmt: skip
    for s in _WINDOW_SIDES:
        for o in (0.0, 0.5, 1.0):
            pairs |= {(at(1.0, 0.0), at(s, o)), (at(s, o), at(1.0, 0.0))}
    matrices = np.stack([_area_matrix(start, side, VERIFY_GRID) for start, side in spans])
    return matrices, np.array(sorted(pairs), np.int64)


_SPAN_MATRICES, _WINDOW_PAIRS = _window_spans()
_FULL_MATRIX = _area_matrix(0.0, 1.0, VERIFY_GRID)


def _windows(thumbs: np.ndarray) -> np.ndarray:
    """(m, T, T, 3) RGB -> every window in verification space, normalised: (m, W, G*G*3)."""
    rows = np.einsum("sgt,mtuc->sumgc", _SPAN_MATRICES, _verification_space(thumbs))
    vertical, horizontal = _WINDOW_PAIRS[:, 0], _WINDOW_PAIRS[:, 1]
    m, g = len(thumbs), VERIFY_GRID
    picked = rows[vertical].reshape(len(vertical), THUMB, m * g * 3)  # (W, T, m*G*3)
    both = np.matmul(_SPAN_MATRICES[horizontal], picked)  # (W, G, m*G*3): w, h, (m, g, c)
    both = both.reshape(len(vertical), g, m, g, 3).transpose(2, 0, 3, 1, 4)  # (m, W, G, G, 3)
    both = both.reshape(m, len(vertical), g * g * 3)
    return _normalised(both)


def _full(thumbs: np.ndarray) -> np.ndarray:
    """(m, T, T, 3) RGB -> the whole view in verification space, normalised: (m, G*G*3)."""
    full = _FULL_MATRIX
    out = np.empty((len(thumbs), VERIFY_GRID * VERIFY_GRID * 3), np.float32)
    for first in range(0, len(thumbs), _CHUNK):
        part = _verification_space(thumbs[first : first + _CHUNK])
        cells = np.einsum("gt,mtuc,hu->mghc", full, part, full, optimize=True)
        out[first : first + _CHUNK] = _normalised(cells.reshape(len(part), -1))
    return out


def candidate_vectors(thumbs: np.ndarray) -> np.ndarray:
    """(n, VIEWS, T, T, 3) thumbnails -> (n * VIEWS, CANDIDATE_GRID^2 * 3) centred unit
    vectors, view-major within each image (row i * VIEWS + v)."""
    step = THUMB // CANDIDATE_GRID
    views = thumbs.reshape(-1, CANDIDATE_GRID, step, CANDIDATE_GRID, step, 3)
    return _normalised(views.mean(axis=(2, 4)).reshape(len(views), -1))


def _ivf_index(dim: int, n: int, cfg: MatchConfig, train: np.ndarray) -> faiss.Index:
    """IVF inner product (sqrt(n) lists, nprobe) for more than flat_max_rows views."""
    nlist = max(1, int(np.sqrt(n)))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(train)
    ivf.nprobe = min(cfg.ivf_nprobe, nlist)
    return ivf


def candidate_pairs(
    db: np.ndarray, cfg: MatchConfig, queries: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate (query i, database j) image pairs: one view of each is among the other's
    candidate_k nearest views with similarity >= candidate_min_similarity. ``db`` and
    ``queries`` are (n, VIEWS, T, T, 3). Without ``queries`` the database queries itself and
    each unordered pair comes once, i < j."""
    if len(db) == 0 or (queries is not None and len(queries) == 0):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    probe = None if queries is None else candidate_vectors(queries)
    return vector_pairs(candidate_vectors(db), cfg, probe)


def vector_pairs(
    db_vectors: np.ndarray, cfg: MatchConfig, probe: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``candidate_pairs`` from the views' ``candidate_vectors`` (n * VIEWS, D), in one
    search: exact (``flat_neighbours``) up to flat_max_rows database views, FAISS IVF beyond
    (``probe`` None: the database queries itself)."""
    self_search = probe is None
    queries = db_vectors if probe is None else probe
    k = neighbours_per_view(cfg, len(db_vectors), self_search)
    if len(db_vectors) <= cfg.flat_max_rows:
        rows, ids, sims = flat_neighbours(db_vectors, queries, k, cfg.candidate_min_similarity)
    else:
        index = on_device(_ivf_index(db_vectors.shape[1], len(db_vectors), cfg, db_vectors),
                          cfg.faiss_device)  # fmt: skip
        index.add(db_vectors)
        found_sims, found = index.search(queries, k)
        rows = np.repeat(np.arange(len(queries), dtype=np.int64), k)
        ids, sims = found.ravel().astype(np.int64), found_sims.ravel()
    keys = neighbour_pair_keys(rows, ids, sims, cfg, len(db_vectors) // VIEWS, self_search)
    return pair_rows_cols(keys, len(db_vectors) // VIEWS)


def neighbours_per_view(cfg: MatchConfig, db_views: int, self_search: bool) -> int:
    """k of the view search: candidate_k images' views, and the view's own image's views
    when the database queries itself (at most every database view)."""
    return min(cfg.candidate_k * VIEWS + (VIEWS if self_search else 0), db_views)


def neighbour_pair_keys(
    rows: np.ndarray,
    ids: np.ndarray,
    sims: np.ndarray,
    cfg: MatchConfig,
    n_db: int,
    self_search: bool,
) -> np.ndarray:
    """The image pairs that neighbour triplets (query view, database view id or -1 for none,
    similarity) propose, as keys i * n_db + j (repeats kept): neighbours at or above
    candidate_min_similarity; for a self-search each unordered pair i < j."""
    keep = (ids >= 0) & (sims >= cfg.candidate_min_similarity)
    rows, cols = rows[keep] // VIEWS, ids[keep] // VIEWS
    if self_search:
        rows, cols = np.minimum(rows, cols), np.maximum(rows, cols)
        keep = rows != cols
        rows, cols = rows[keep], cols[keep]
    return rows * n_db + cols


def pair_rows_cols(keys: np.ndarray, n_db: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct pair keys i * n_db + j -> (rows, cols), sorted."""
    pairs = np.unique(keys)
    return pairs // n_db, pairs % n_db


def _directed_similarity(
    src: np.ndarray, dst_full: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """For pairs (rows[p], cols[p]): the best correlation between a window of src[rows[p]]
    and the whole dst_full[cols[p]]. src: (n, T, T, 3); dst_full: (n', D) normalised."""
    out = np.full(len(rows), -1.0, np.float32)
    order = np.argsort(rows, kind="stable")
    images, starts = np.unique(rows[order], return_index=True)
    bounds = np.append(starts, len(order))
    for first in range(0, len(images), _CHUNK):
        windows = _windows(src[images[first : first + _CHUNK]])  # (u, W, D)
        for u in range(len(windows)):
            part = order[bounds[first + u] : bounds[first + u + 1]]
            out[part] = (windows[u] @ dst_full[cols[part]].T).max(axis=0)
    return out


def pair_similarity(a: np.ndarray, b: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Verified similarity of pairs (a[rows[p]], b[cols[p]]), thumbnails (n, VIEWS, T, T, 3):
    per view, the best correlation of one image's whole view with a window of the other's,
    either way round; then the best view. Shape (len(rows),) float32."""
    best = np.full(len(rows), -1.0, np.float32)
    for view in range(VIEWS):
        va, vb = a[:, view], b[:, view]
        one_way = _directed_similarity(va, _full(vb), rows, cols)
        other_way = _directed_similarity(vb, _full(va), cols, rows)
        best = np.maximum(best, np.maximum(one_way, other_way))
    return best


def candidate_similarities(
    thumbs: np.ndarray, cfg: MatchConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every candidate pair i < j among (n, VIEWS, T, T, 3) thumbnails, with its verified
    similarity (``verified`` says which are duplicates)."""
    rows, cols = candidate_pairs(thumbs, cfg)
    return rows, cols, pair_similarity(thumbs, thumbs, rows, cols)


def verified(
    rows: np.ndarray,
    cols: np.ndarray,
    sims: np.ndarray,
    cfg: MatchConfig,
    cross: bool = False,
) -> np.ndarray:
    """Which candidate pairs are duplicates: similar enough, and standing out from each
    image's other candidates (the ratio test). With ``cross`` rows and cols index two
    different sets (queries, database). (len(rows),) bool."""  # fmt: skip
    offset = int(rows.max()) + 1 if cross and len(rows) else 0
    a, b = rows, cols + offset
    distance = 1.0 - sims.astype(np.float64)
    reference = np.minimum(_rank_distance(a, b, distance, cfg.ratio_rank),
                           _rank_distance(b, a, distance, cfg.ratio_rank))  # fmt: skip
    return (sims >= cfg.min_similarity) & (distance <= cfg.max_distance_ratio * reference)


def _rank_distance(node: np.ndarray, other: np.ndarray, distance: np.ndarray,
                   rank: int) -> np.ndarray:  # fmt: skip
    """Per pair p: node[p]'s distance to its rank-th closest partner other than other[p]
    (2.0, the largest correlation distance, where it has fewer)."""
    both_nodes = np.concatenate([node, other])
    both_distance = np.concatenate([distance, distance])
    order = np.lexsort((both_distance, both_nodes))
    nodes, dists = both_nodes[order], both_distance[order]
    starts = np.searchsorted(nodes, nodes, side="left")
    position = np.arange(len(nodes)) - starts  # 0 = the node's closest partner
    count = np.searchsorted(nodes, nodes, side="right") - starts
    nth = np.full(len(nodes), 2.0)
    has = count > rank
    nth[has] = dists[starts[has] + rank]  # the (rank+1)-th closest: skips the pair itself
    nth_before = np.full(len(nodes), 2.0)
    has = count >= rank
    nth_before[has] = dists[starts[has] + rank - 1]
    # The pair's own partner is among the node's `rank` closest: look one further.
    reference = np.where(position < rank, nth, nth_before)
    out = np.empty(len(nodes))
    out[order] = reference
    return out[: len(node)]


def near_duplicate_pairs(
    thumbs: np.ndarray, cfg: MatchConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Verified pairs i < j among (n, VIEWS, T, T, 3) thumbnails, with their similarity."""
    rows, cols, sims = candidate_similarities(thumbs, cfg)
    keep = verified(rows, cols, sims, cfg)
    return rows[keep], cols[keep], sims[keep]


def cross_matches(
    queries: np.ndarray, db: np.ndarray, cfg: MatchConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Verified pairs (query i, database j) between two thumbnail sets, with similarity."""
    rows, cols = candidate_pairs(db, cfg, queries)
    sims = pair_similarity(queries, db, rows, cols)
    keep = verified(rows, cols, sims, cfg, cross=True)
    return rows[keep], cols[keep], sims[keep]
