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
3. **Resolution.** A copy shrunk on the web (and upscaled again by the download) has lost
   detail its original still has, so sharp they differ like two different pictures. Each
   thumbnail records its views' extents, and with the download's original sizes
   (``thumbnails_resolution``) a pair of which one image is far smaller than the other is
   compared at the smaller one's resolution, both views resampled to it.
4. **The band.** Pairs from ``band_min_similarity`` up to ``min_similarity`` are
   duplicates too when what differs between them is spread over the picture, as JPEG noise
   and brightness clipping are, and not gathered in one place, as where two distinct
   drawings of one layout differ (a mouth, an arrow, an emblem): ``residual_concentration``
   at most ``max_residual_concentration``, and when they pass a stricter ratio test
   (``band_max_distance_ratio``).
5. **The local-difference veto.** A pair that passed is no duplicate after all when what
   differs between the two whole views, after the best brightness/contrast fit that may clip
   (``local_difference``), is gathered in one block (more than ``local_max_share`` of it, and
   more than ``local_min_residual`` of the picture's variance) whose centre lies at least
   ``local_min_border`` of the side from every edge: two drawings of one layout differing
   in their middle (an arrow, a mouth, an emblem), which correlate as well as a copy. A mark
   near an edge (a watermark, a shop name) may be what a copy added, and stays a duplicate.
   Decontamination (``cross_matches``) does without the veto: there a false match costs one
   training sample, a missed one the benchmark's meaning.

Thresholds come from CurateConfig and were calibrated with ``bench/bench_dedup_quality.py``.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import faiss
import numpy as np
from PIL import Image
from scipy.ndimage import uniform_filter
from threadpoolctl import threadpool_limits

from tasks.curate.faiss_device import FaissDevice, on_device
from tasks.curate.flat_knn import flat_neighbours
from tasks.curate.phash import flatten_alpha

THUMB = 32
"""Side of the stored thumbnails (pixels)."""
VIEWS = 2
"""Views per image: the whole image, and the image with its uniform borders trimmed."""
PIXEL_BYTES = VIEWS * THUMB * THUMB * 3
EXTENT_BYTES = VIEWS * 2 * 2
"""Each view's extent in the image (rows, columns), uint16, after its pixels."""
THUMB_BYTES = PIXEL_BYTES + EXTENT_BYTES
THUMBNAIL_VERSION = 2
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
_BLANK_WINDOW = 1e-4
"""A window is blank when its variance is at most this share of its sum of squares (taken
after the view's own mean is subtracted): a standard deviation under 1 % of the window's
offset from that mean, where float32 sums of the 768 cells' squares leave rounding noise
some 100 times smaller."""
_YCBCR = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32
)
"""RGB -> (Y, Cb, Cr) with chroma centred on grey (JPEG's matrix, without its offsets)."""
_RGB = np.linalg.inv(_YCBCR).astype(np.float32)
_CHROMA_BLUR = 6
"""Box filter (thumbnail pixels) over the chroma channels before verification: JPEG stores
colour at half resolution, which at 28 px smears colour edges over several pixels."""


_RESOLUTION_RATIO = 1.25
"""A pair is compared at the coarser view's resolution when one image's native shorter side is
more than this many times the other's, on the axes where the views' native extents differ
by as much (and the coarser has fewer than THUMB pixels): ``_common_resolution``."""
_RESAMPLE_TENT = 1.5
"""Half-width of the tent filter that brings a view down to the coarser one's resolution, in
units of the scale: 1 is PIL's antialiased bilinear resize, 2 its bicubic one's support. A
shrunk copy is blurred both by that resize and by the thumbnail's upscale; on the harness's 28
px resize pool a tent of 1, 1.25, 1.5 and 2 found 0.943, 0.955, 0.965 and 0.970 of the copies,
with no wrong pair at any, and 1.5 merged no two different images of the demo web. (Measured
before pairs were also gated on the images' shorter sides; with the gate, 1.5 finds 0.970.)"""


@dataclass(frozen=True)
class MatchConfig:
    """Thresholds of the matcher (from CurateConfig ``near_dup_*``)."""

    min_similarity: float
    candidate_k: int
    candidate_min_similarity: float
    band_min_similarity: float = 1.0
    max_residual_concentration: float = 0.0
    band_max_distance_ratio: float = 0.0
    max_distance_ratio: float = 1.0
    ratio_rank: int = 2
    flat_max_rows: int = 50_000
    ivf_nprobe: int = 16
    faiss_device: FaissDevice = "auto"
    local_max_share: float = 1.0
    local_min_residual: float = 0.0
    local_min_border: float = 0.0


def _trim_once(pixels: np.ndarray) -> np.ndarray:
    """Strip rows and columns of the corners' colour from every side (as ``convert -trim``
    with a fuzz does); the picture's first non-uniform lines stay. A line is uniform when at
    least _BORDER_UNIFORM of its pixels are within _BORDER_TOLERANCE of that colour in every
    channel: rows over the whole width, then columns over the rows that stay."""
    h, w = pixels.shape[:2]
    corners = np.stack([pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]])
    middle = np.sort(corners.astype(np.int16), axis=0)[1:3]
    colour = middle.mean(axis=0)  # the corners' median, per channel (may end in .5)
    low, high = np.ceil(colour - _BORDER_TOLERANCE), np.floor(colour + _BORDER_TOLERANCE)
    close = ((pixels >= low) & (pixels <= high)).all(axis=2)  # (h, w): near the colour
    top, bottom = _uniform_ends(close.mean(axis=1) >= _BORDER_UNIFORM)
    left, right = _uniform_ends(close[top:bottom].mean(axis=0) >= _BORDER_UNIFORM)
    if bottom - top <= 2 or right - left <= 2:  # a blank image: nothing to trim to
        return pixels
    return pixels[top:bottom, left:right]


def _uniform_ends(uniform: np.ndarray) -> tuple[int, int]:
    """Lines (n,) -> [start, stop): the uniform lines at either end stripped, the start one
    at a time first, then the stop, as long as more than two lines are left."""
    n = len(uniform)
    varied = np.flatnonzero(~uniform)
    start = min(int(varied[0]) if len(varied) else n, max(n - 2, 0))
    stop = max(int(varied[-1]) + 1 if len(varied) else 0, start + 2)
    return start, min(stop, n)


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
    """The image's matching views, VIEWS x THUMB x THUMB x 3 uint8, then each view's extent
    in the image (rows, columns) as uint16 (THUMB_BYTES bytes in all): the whole image, and
    the image with its uniform borders trimmed."""
    pixels = np.asarray(flatten_alpha(image), dtype=np.uint8)
    trimmed = trim_borders(pixels)
    extents = np.minimum([pixels.shape[:2], trimmed.shape[:2]], 65535).astype("<u2")
    return np.stack([_thumb(pixels), _thumb(trimmed)]).tobytes() + extents.tobytes()


def _blob_rows(blobs: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), THUMB_BYTES)


def thumbnails_array(blobs: list[bytes]) -> np.ndarray:
    """THUMB_BYTES blobs -> their views' pixels, (n, VIEWS, THUMB, THUMB, 3) uint8. They stay
    uint8 (a quarter of float32's memory: the demo's evaluation thumbnails are 146 MB, not
    585 MB); each step converts the chunk it works on (exactly: uint8 fits float32)."""
    pixels = _blob_rows(blobs)[:, :PIXEL_BYTES]
    return pixels.reshape(len(blobs), VIEWS, THUMB, THUMB, 3)


def thumbnails_resolution(blobs: list[bytes], detail: np.ndarray | None = None) -> np.ndarray:
    """THUMB_BYTES blobs -> how many of the web image's own pixels span each view, (n, VIEWS,
    2) float32 (rows, columns): the view's extent in the stored image times ``detail`` (n,),
    the web image's side over the stored image's where the download upscaled it (at most 1;
    None: every image is as it was on the web)."""
    extents = _blob_rows(blobs)[:, PIXEL_BYTES:].copy().view("<u2").reshape(len(blobs), VIEWS, 2)
    scale = np.ones(len(blobs)) if detail is None else np.minimum(np.asarray(detail, float), 1.0)
    return (extents * scale[:, None, None]).astype(np.float32)


def _normalised(x: np.ndarray) -> np.ndarray:
    """Rows centred by their own mean and scaled to unit length (blank rows stay zero)."""
    x = (x - x.mean(axis=-1, keepdims=True)).astype(np.float32, copy=False)
    x /= np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
    return x


def _verification_space(thumbs: np.ndarray) -> np.ndarray:
    """(m, T, T, 3) RGB (uint8 or float) -> (m, T, T, 3) float32 RGB with the colour (Cb,
    Cr) blurred by _CHROMA_BLUR and the brightness (Y) kept sharp."""
    ycc = thumbs.astype(np.float32, copy=False) @ _YCBCR.T
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
_SPAN_ROWS = _SPAN_MATRICES.reshape(-1, THUMB)
_WINDOWS_BY_HORIZONTAL_SPAN = [(int(h), np.flatnonzero(_WINDOW_PAIRS[:, 1] == h))
                               for h in np.unique(_WINDOW_PAIRS[:, 1])]  # fmt: skip
_FULL_MATRIX = _area_matrix(0.0, 1.0, VERIFY_GRID)
"""A view in verification space is its VERIFY_GRID x VERIFY_GRID cells, ordered (row,
channel, column): the column axis last is what the windows' second product leaves."""


class _Scratch:
    """float32 buffers one thread reuses from chunk to chunk. A chunk's windows take tens of
    MiB; allocated afresh, every chunk's pages fault in again, and threads that fault at once
    wait on each other in the kernel."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A contiguous (uninitialised) float32 array of ``shape``; valid until the next
        ``get`` of the same name."""
        size = int(np.prod(shape))
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size:
            buffer = self._buffers[name] = np.empty(size, np.float32)
        return buffer[:size].reshape(shape)


def _windows(space: np.ndarray, scratch: _Scratch | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(m, T, T, 3) views in verification space -> every window's cells, (m, W, G*3*G), and
    the inverse of each window's norm once centred on its own mean, (m, W): the correlation
    of window w with a centred unit vector d is (cells[w] @ d) * inverse_norm[w] (d sums to
    zero, so the window's mean drops out), and no centred, normalised copy of the windows
    is written. The cells are of the view less its own mean (a window's variance is the
    same, and float32 sums of squares lose less to cancellation); a blank window's inverse
    norm is 0 (``_BLANK_WINDOW``). Two matrix products: every vertical span of each view at
    once, then per horizontal span the windows that use it (each one BLAS call; no
    transposed copy of the output). With ``scratch`` the large arrays, the cells returned
    among them, live in its buffers."""
    m, g, spans = len(space), VERIFY_GRID, len(_SPAN_MATRICES)
    scratch = scratch or _Scratch()
    centred = space - space.mean(axis=(1, 2, 3), keepdims=True)
    columns_last = np.ascontiguousarray(centred.transpose(0, 1, 3, 2))
    vertical = np.matmul(_SPAN_ROWS, columns_last.reshape(m, THUMB, 3 * THUMB),
                         out=scratch.get("vertical", (m, spans * g, 3 * THUMB)))  # fmt: skip
    vertical = vertical.reshape(m, spans, g, 3, THUMB)  # (m, S, G rows, channel, T columns)
    out = scratch.get("windows", (m, len(_WINDOW_PAIRS), g, 3, g))
    for horizontal, windows in _WINDOWS_BY_HORIZONTAL_SPAN:
        n = len(windows)
        picked = np.take(vertical, _WINDOW_PAIRS[windows, 0], axis=1, mode="clip",
                         out=scratch.get("picked", (m, n, g, 3, THUMB)))  # fmt: skip
        product = np.matmul(picked.reshape(-1, THUMB), _SPAN_MATRICES[horizontal].T,
                            out=scratch.get("product", (m * n * g * 3, g)))  # fmt: skip
        out[:, windows] = product.reshape(m, n, g, 3, g)
    cells = out.reshape(m, len(_WINDOW_PAIRS), g * 3 * g)
    sums = cells.sum(axis=2)
    squares = np.einsum("mwd,mwd->mw", cells, cells)
    variance = squares - sums * sums / cells.shape[2]
    # A window whose variance is at float32's resolution of its sum of squares is blank (a
    # plain background): it correlates 0 with anything, not its rounding noise.
    blank = variance <= _BLANK_WINDOW * squares
    return cells, np.where(blank, 0.0, 1.0 / np.sqrt(np.where(blank, 1.0, variance)))


def _full(thumbs: np.ndarray) -> np.ndarray:
    """(m, T, T, 3) RGB -> the whole view in verification space, normalised: (m, G*3*G)."""
    full = _FULL_MATRIX
    out = np.empty((len(thumbs), VERIFY_GRID * 3 * VERIFY_GRID), np.float32)
    for first in range(0, len(thumbs), _CHUNK):
        part = _verification_space(thumbs[first : first + _CHUNK])
        cells = np.einsum("gt,mtuc,hu->mgch", full, part, full, optimize=True)
        out[first : first + _CHUNK] = _normalised(cells.reshape(len(part), -1))
    return out


_CELL_ROWS = np.kron(np.eye(CANDIDATE_GRID, dtype=np.float32),
                     np.ones((1, THUMB // CANDIDATE_GRID), np.float32))  # fmt: skip
"""(CANDIDATE_GRID, THUMB) 0/1: which thumbnail rows each candidate cell row sums."""
_CELL_COLUMNS = np.kron(_CELL_ROWS, np.eye(3, dtype=np.float32)).T
"""(THUMB * 3, CANDIDATE_GRID * 3) 0/1: which (column, channel) values each cell's channel
sums, for a view laid out (rows, columns * 3)."""
_CANDIDATE_CHUNK = 1024
"""Views converted to float32 at a time for their cell sums (12 MiB, reused)."""


def candidate_vectors(thumbs: np.ndarray) -> np.ndarray:
    """(n, VIEWS, T, T, 3) thumbnails -> (n * VIEWS, CANDIDATE_GRID^2 * 3) centred unit
    vectors, view-major within each image (row i * VIEWS + v)."""
    views = thumbs.reshape(-1, THUMB, THUMB * 3)
    out = np.empty((len(views), CANDIDATE_GRID * CANDIDATE_GRID * 3), np.float32)
    m = min(_CANDIDATE_CHUNK, len(views))
    chunk = np.empty((m, THUMB, THUMB * 3), np.float32)
    rows = np.empty((m, CANDIDATE_GRID, THUMB * 3), np.float32)
    cells = np.empty((m, CANDIDATE_GRID, CANDIDATE_GRID * 3), np.float32)
    for first in range(0, len(views), _CANDIDATE_CHUNK):
        source = views[first : first + _CANDIDATE_CHUNK]
        n = len(source)
        np.copyto(chunk[:n], source)
        # Cell sums as two products with 0/1 matrices (rows, then columns per channel): sums
        # of at most 16 uint8 values are whole numbers float32 holds exactly, so they equal
        # numpy's sums bit for bit, in about half the time of two reductions with a cast. The
        # scale drops out in the normalisation, which is per row: chunk by chunk it is the
        # same. The buffers are reused: on a machine slow to fault fresh pages in, they
        # were most of the time.
        np.matmul(_CELL_ROWS, chunk[:n], out=rows[:n])
        np.matmul(rows[:n], _CELL_COLUMNS, out=cells[:n])
        out[first : first + n] = _normalised(cells[:n].reshape(n, -1))
    return out


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
    and the whole dst_full[cols[p]]. src: (n, T, T, 3); dst_full: (n', D) normalised. Chunks
    of _CHUNK source images run on ``_chunk_threads`` threads."""
    out = np.full(len(rows), -1.0, np.float32)
    order = np.argsort(rows, kind="stable")
    images, starts = np.unique(rows[order], return_index=True)
    bounds = np.append(starts, len(order))

    scratch = threading.local()

    def chunk(first: int) -> None:
        if not hasattr(scratch, "buffers"):
            scratch.buffers = _Scratch()
        space = _verification_space(src[images[first : first + _CHUNK]])
        windows, inverse_norm = _windows(space, scratch.buffers)  # (u, W, D), (u, W)
        for u in range(len(windows)):
            part = order[bounds[first + u] : bounds[first + u + 1]]
            products = windows[u] @ dst_full[cols[part]].T  # (W, pairs)
            out[part] = (products * inverse_norm[u][:, None]).max(axis=0)

    firsts = range(0, len(images), _CHUNK)
    threads = min(_chunk_threads(), len(firsts))
    # One BLAS thread per chunk, on one chunk thread or several: the cores are not
    # oversubscribed (the chunks' products are small), and a product is computed the same
    # way whatever the number of threads; a multithreaded BLAS may round it otherwise (on an
    # AMD EPYC, one chunk thread with two BLAS threads changed similarities in the last
    # bit). Each chunk writes its own pairs' entries of ``out``. The BLAS limit is
    # process-wide while the chunks run.
    with threadpool_limits(limits=1, user_api="blas"):
        if threads <= 1:
            for first in firsts:
                chunk(first)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(chunk, firsts))
    return out


_MAX_CHUNK_THREADS = 8
"""At most this many chunk threads: each holds ~40 MiB of scratch buffers at _CHUNK 128."""


def _chunk_threads() -> int:
    """Threads the verification's chunks run on: the cores this process may use, at most
    _MAX_CHUNK_THREADS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(cores or 1, _MAX_CHUNK_THREADS)


def _view_similarity(
    va: np.ndarray, vb: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """The best correlation of one view's whole with a window of the other's, either way
    round, for pairs (va[rows[p]], vb[cols[p]]); views (n, T, T, 3). Only the views that
    some pair names are transformed."""
    used_a, rows = np.unique(rows, return_inverse=True)
    used_b, cols = np.unique(cols, return_inverse=True)
    va, vb, rows, cols = va[used_a], vb[used_b], rows.ravel(), cols.ravel()
    one_way = _directed_similarity(va, _full(vb), rows, cols)
    return np.maximum(one_way, _directed_similarity(vb, _full(va), cols, rows))


def _bilinear_matrix(pixels: int) -> np.ndarray:
    """(THUMB, pixels) weights: a line of ``pixels`` resized to THUMB bilinearly (pixel
    centres aligned, as PIL resizes up)."""
    x = np.clip((np.arange(THUMB) + 0.5) * pixels / THUMB - 0.5, 0, pixels - 1)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, pixels - 1)
    out = np.zeros((THUMB, pixels), np.float32)
    np.add.at(out, (np.arange(THUMB), lo), 1 - (x - lo))
    np.add.at(out, (np.arange(THUMB), hi), x - lo)
    return out


def _resample_matrix(pixels: int) -> np.ndarray:
    """(THUMB, THUMB): a thumbnail line averaged down to ``pixels`` and resized back up, as a
    web image that small looks once upscaled (identity at THUMB pixels or more)."""
    if pixels >= THUMB:
        return np.eye(THUMB, dtype=np.float32)
    return _bilinear_matrix(pixels) @ _tent_matrix(pixels)


def _tent_matrix(pixels: int) -> np.ndarray:
    """(pixels, THUMB) weights: a thumbnail line resized down to ``pixels`` with a tent filter
    _RESAMPLE_TENT times as wide as the scale."""
    scale = THUMB / pixels
    centres = (np.arange(pixels) + 0.5) * scale
    offsets = np.abs(np.arange(THUMB)[None, :] + 0.5 - centres[:, None])
    weights = np.clip(1 - offsets / (_RESAMPLE_TENT * scale), 0, None)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _resampled(views: np.ndarray, height: int, width: int) -> np.ndarray:
    """(m, T, T, 3) views (uint8 or float) as they would look at height x width pixels,
    upscaled again, float32."""
    tall, wide = _resample_matrix(height), _resample_matrix(width)
    views = views.astype(np.float32, copy=False)
    return np.einsum("st,mtuc,vu->msvc", tall, views, wide, optimize=True)


def _common_resolution(
    res_a: np.ndarray, res_b: np.ndarray, side_a: np.ndarray, side_b: np.ndarray
) -> np.ndarray:
    """Per pair (m, 2) of views' native resolutions (rows, columns) and (m,) the images'
    native shorter sides: the resolution both views are compared at, (m, 2) int. It is the
    coarser view's on an axis where that has fewer than THUMB pixels and far fewer than the
    other view, in a pair where one image is far smaller than the other (a copy shrunk on
    the web); THUMB elsewhere (views whose extents differ only because their borders were
    trimmed differently are not resampled)."""
    low, high = np.minimum(res_a, res_b), np.maximum(res_a, res_b)
    shrunk = np.maximum(side_a, side_b) > _RESOLUTION_RATIO * np.minimum(side_a, side_b)
    coarser = shrunk[:, None] & (low < THUMB) & (high > _RESOLUTION_RATIO * low)
    return np.where(coarser, np.maximum(np.rint(low), 2), THUMB).astype(np.int64)


def _pair_resolution(
    res_a: np.ndarray, res_b: np.ndarray, rows: np.ndarray, cols: np.ndarray, view: int
) -> np.ndarray:
    """``_common_resolution`` of pairs (a[rows[p]], b[cols[p]]) for one view, from the
    images' resolutions (n, VIEWS, 2); an image's shorter side is its whole view's."""
    return _common_resolution(res_a[rows, view], res_b[cols, view],
                              res_a[rows, 0].min(axis=1), res_b[cols, 0].min(axis=1))  # fmt: skip


def pair_similarity(
    a: np.ndarray,
    b: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    res_a: np.ndarray | None = None,
    res_b: np.ndarray | None = None,
) -> np.ndarray:
    """Verified similarity of pairs (a[rows[p]], b[cols[p]]), thumbnails (n, VIEWS, T, T, 3):
    per view, the best correlation of one image's whole view with a window of the other's,
    either way round; then the best view. With the views' native resolutions (``res_a``,
    ``res_b``: ``thumbnails_resolution``), a pair of which one image is far smaller than the
    other (a copy shrunk on the web, then upscaled) is compared at the smaller one's
    resolution, both views resampled to it (``_common_resolution``). Shape (len(rows),)
    float32."""
    best = np.full(len(rows), -1.0, np.float32)
    for view in range(VIEWS):
        va, vb = a[:, view], b[:, view]
        sims = np.empty(len(rows), np.float32)
        sharp = np.ones(len(rows), bool)
        for height, width, p in _coarser_groups(res_a, res_b, rows, cols, view):
            sharp[p] = False
            ia, ra = np.unique(rows[p], return_inverse=True)
            ib, rb = np.unique(cols[p], return_inverse=True)
            shrink = partial(_resampled, height=height, width=width)
            sims[p] = _view_similarity(shrink(va[ia]), shrink(vb[ib]), ra.ravel(), rb.ravel())
        sims[sharp] = _view_similarity(va, vb, rows[sharp], cols[sharp])
        best = np.maximum(best, sims)
    return best


def _coarser_groups(
    res_a: np.ndarray | None,
    res_b: np.ndarray | None,
    rows: np.ndarray,
    cols: np.ndarray,
    view: int,
) -> list[tuple[int, int, np.ndarray]]:
    """The pairs (a[rows[p]], b[cols[p]]) whose ``view`` is compared below THUMB pixels
    (``_pair_resolution``), grouped by that resolution: (height, width, pair indices); none
    without the resolutions."""
    if res_a is None or res_b is None or not len(rows):
        return []
    target = _pair_resolution(res_a, res_b, rows, cols, view)
    coarser = np.flatnonzero((target < THUMB).any(axis=1))
    groups, which = np.unique(target[coarser], axis=0, return_inverse=True)
    return [(int(height), int(width), coarser[which.ravel() == g])
            for g, (height, width) in enumerate(groups)]  # fmt: skip


def _resampled_pair_views(
    a: np.ndarray,
    b: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    view: int,
    res_a: np.ndarray | None,
    res_b: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pair p's ``view`` of a[rows[p]] and b[cols[p]] in verification space (normalised
    (m, G*3*G) each), resampled to their common resolution as ``pair_similarity`` does."""
    x = np.empty((len(rows), VERIFY_GRID * 3 * VERIFY_GRID), np.float32)
    y = np.empty_like(x)
    sharp = np.ones(len(rows), bool)
    for height, width, p in _coarser_groups(res_a, res_b, rows, cols, view):
        sharp[p] = False
        x[p] = _full_per_pair(a[:, view], rows[p], height, width)
        y[p] = _full_per_pair(b[:, view], cols[p], height, width)
    x[sharp] = _full_per_pair(a[:, view], rows[sharp])
    y[sharp] = _full_per_pair(b[:, view], cols[sharp])
    return x, y


def _full_per_pair(
    views: np.ndarray, index: np.ndarray, height: int = THUMB, width: int = THUMB
) -> np.ndarray:
    """``_full`` of views[index[p]] per pair p, each image transformed once (resampled to
    height x width first when that is below THUMB)."""
    used, inverse = np.unique(index, return_inverse=True)
    picked = views[used]
    if height < THUMB or width < THUMB:
        picked = _resampled(picked, height, width)
    return _full(picked)[inverse.ravel()]


def residual_concentration(
    a: np.ndarray,
    b: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    res_a: np.ndarray | None = None,
    res_b: np.ndarray | None = None,
) -> np.ndarray:
    """Per pair (a[rows[p]], b[cols[p]]): how much of what differs between the two whole
    views sits in one place. The residual of one normalised view after the best fit of the
    other (what brightness and contrast cannot explain) is summed per cell of the
    VERIFY_GRID; the result is the largest share of it that one block of a quarter of the
    side by a quarter holds (1/16 when spread evenly, up to 1 when one detail differs).
    Computed on the view where the two correlate best, _LOCAL_CHUNK pairs at a time. Shape
    (len(rows),) float32."""
    out = np.ones(len(rows), np.float32)
    for first in range(0, len(rows), _LOCAL_CHUNK):
        part = slice(first, first + _LOCAL_CHUNK)
        out[part] = _residual_concentration(a, b, rows[part], cols[part], res_a, res_b)
    return out


def _residual_concentration(
    a: np.ndarray,
    b: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    res_a: np.ndarray | None,
    res_b: np.ndarray | None,
) -> np.ndarray:
    out = np.ones(len(rows), np.float32)
    best = np.full(len(rows), -np.inf, np.float32)
    block = VERIFY_GRID // 4
    for view in range(VIEWS):
        x, y = _resampled_pair_views(a, b, rows, cols, view, res_a, res_b)
        corr = (x * y).sum(axis=1)
        energy = ((y - corr[:, None] * x) ** 2).reshape(len(rows), VERIFY_GRID, 3, VERIFY_GRID)
        cells = energy.sum(axis=2)
        blocks = np.lib.stride_tricks.sliding_window_view(cells, (block, block), axis=(1, 2))
        share = blocks.sum(axis=(3, 4)).max(axis=(1, 2)) / np.maximum(cells.sum(axis=(1, 2)), 1e-12)
        better = corr > best
        out[better], best[better] = share[better], corr[better]
    return out


_TONE_FIT_PASSES = 4
"""Least-squares refits of the clipped brightness/contrast fit (``_clipped_fit_residual``),
each over the pixels the previous fit left unclipped."""
_LOCAL_BLOCK = VERIFY_GRID // 4
"""Side, in VERIFY_GRID cells, of the block a local difference is measured in."""
_LOCAL_CHUNK = 1024
"""Pairs whose local difference (a few float64 (CHUNK, T*T*3) arrays: ~25 MiB each) or
residual concentration is computed at once."""


def _clipped_fit_residual(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(m, P) pixel values 0-255 -> y minus the best fit clip(a * x + b, 0, 255) per row: a
    brightness or contrast change leaves no residual even where it clips (white stays white),
    which a plain linear fit leaves there. a and b are fitted by least squares over the
    pixels that the previous pass's fit does not clip."""
    unclipped = np.ones(x.shape, bool)
    for _ in range(_TONE_FIT_PASSES):
        w = unclipped.astype(np.float64)
        n = np.maximum(w.sum(axis=1), 1.0)
        mean_x, mean_y = (w * x).sum(axis=1) / n, (w * y).sum(axis=1) / n
        dx = x - mean_x[:, None]
        covariance = (w * dx * (y - mean_y[:, None])).sum(axis=1)
        slope = covariance / np.maximum((w * dx**2).sum(axis=1), 1e-9)
        fit = slope[:, None] * dx + mean_y[:, None]
        unclipped = (fit > 1.0) & (fit < 254.0)
    return y - np.clip(fit, 0.0, 255.0)


def _local_difference_cells(va: np.ndarray, vb: np.ndarray) -> np.ndarray:
    """Views (m, T, T, 3) -> (m, G, G): per VERIFY_GRID cell, the energy of what the best
    clipped fit of one view leaves of the other, as a share of the fitted view's variance;
    whichever way round leaves less."""
    m = len(va)
    x, y = va.reshape(m, -1).astype(np.float64), vb.reshape(m, -1).astype(np.float64)
    best = np.full((m, VERIFY_GRID, VERIFY_GRID), np.inf)
    step = THUMB // VERIFY_GRID
    for source, target in ((x, y), (y, x)):
        energy = (_clipped_fit_residual(source, target) ** 2).reshape(m, THUMB, THUMB, 3)
        cells = energy.sum(axis=3).reshape(m, VERIFY_GRID, step, VERIFY_GRID, step).sum(axis=(2, 4))
        variance = ((target - target.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
        cells /= np.maximum(variance, 1e-9)[:, None, None]
        better = cells.sum(axis=(1, 2)) < best.sum(axis=(1, 2))
        best[better] = cells[better]
    return best


def local_difference(
    a: np.ndarray,
    b: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    res_a: np.ndarray | None = None,
    res_b: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pair (a[rows[p]], b[cols[p]]), on the view whose whole the other explains best
    (``_local_difference_cells``, both resampled to their common resolution as
    ``pair_similarity`` does): (share, residual, border), each (len(rows),) float.

    - share: the largest share of the residual that one block of a quarter of the side by a
      quarter holds (1/16 when spread evenly, 1 when one detail differs);
    - residual: that block's residual as a share of the picture's variance;
    - border: how far the residual's centre (each cell weighted by its energy squared, so
      the centre follows where the residual gathers) lies from the nearest edge, as a
      fraction of the side (0.5 in the middle)."""
    cells = np.zeros((len(rows), VERIFY_GRID, VERIFY_GRID))
    total = np.full(len(rows), np.inf)
    for view in range(VIEWS):
        va, vb = a[rows, view].astype(np.float32), b[cols, view].astype(np.float32)
        for height, width, p in _coarser_groups(res_a, res_b, rows, cols, view):
            va[p], vb[p] = _resampled(va[p], height, width), _resampled(vb[p], height, width)
        view_cells = _local_difference_cells(va, vb)
        view_total = view_cells.sum(axis=(1, 2))
        better = view_total < total
        cells[better], total[better] = view_cells[better], view_total[better]
    block = _LOCAL_BLOCK
    blocks = np.lib.stride_tricks.sliding_window_view(cells, (block, block), axis=(1, 2))
    residual = blocks.sum(axis=(3, 4)).reshape(len(rows), -1).max(axis=1)
    share = residual / np.maximum(total, 1e-12)
    weight = cells**2
    centre = (np.arange(VERIFY_GRID) + 0.5) / VERIFY_GRID
    mass = np.maximum(weight.sum(axis=(1, 2)), 1e-300)
    y = (weight.sum(axis=2) * centre).sum(axis=1) / mass
    x = (weight.sum(axis=1) * centre).sum(axis=1) / mass
    border = np.minimum(np.minimum(y, 1 - y), np.minimum(x, 1 - x))
    return share, residual, border


def verify(
    a: np.ndarray,
    b: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    sims: np.ndarray,
    cfg: MatchConfig,
    res_a: np.ndarray | None = None,
    res_b: np.ndarray | None = None,
    cross: bool = False,
    local_veto: bool = True,
) -> np.ndarray:
    """``verified`` for candidate pairs of thumbnails a and b with their ``pair_similarity``:
    the residual concentration is computed for the pairs in the band only, and with
    ``local_veto`` the pairs that pass lose the ones the local-difference veto
    (``local_difference``) refuses."""
    band = (sims >= cfg.band_min_similarity) & (sims < cfg.min_similarity)
    concentration = np.ones(len(rows), np.float32)
    if band.any():
        concentration[band] = residual_concentration(a, b, rows[band], cols[band], res_a, res_b)
    keep = verified(rows, cols, sims, cfg, cross, concentration)
    if local_veto:
        keep &= ~local_vetoes(a, b, rows, cols, keep, cfg, res_a, res_b)
    return keep


def local_vetoes(
    a: np.ndarray,
    b: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    passed: np.ndarray,
    cfg: MatchConfig,
    res_a: np.ndarray | None = None,
    res_b: np.ndarray | None = None,
) -> np.ndarray:
    """Which of the pairs that ``passed`` the local-difference veto refuses: what differs is
    gathered in one block (``local_difference``: share above ``local_max_share``, residual
    above ``local_min_residual``) whose centre lies ``local_min_border`` or more from every
    edge. (len(rows),) bool; none when the veto is off (``local_max_share`` 1)."""
    out = np.zeros(len(rows), bool)
    if cfg.local_max_share >= 1.0:
        return out
    candidates = np.flatnonzero(passed)
    for first in range(0, len(candidates), _LOCAL_CHUNK):
        part = candidates[first : first + _LOCAL_CHUNK]
        share, residual, border = local_difference(a, b, rows[part], cols[part], res_a, res_b)
        local = (share > cfg.local_max_share) & (residual > cfg.local_min_residual)
        out[part] = local & (border >= cfg.local_min_border)
    return out


def candidate_similarities(
    thumbs: np.ndarray, cfg: MatchConfig, resolution: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every candidate pair i < j among (n, VIEWS, T, T, 3) thumbnails, with its verified
    similarity (``verified`` says which are duplicates; ``resolution`` as in
    ``pair_similarity``)."""
    rows, cols = candidate_pairs(thumbs, cfg)
    return rows, cols, pair_similarity(thumbs, thumbs, rows, cols, resolution, resolution)


def verified(
    rows: np.ndarray,
    cols: np.ndarray,
    sims: np.ndarray,
    cfg: MatchConfig,
    cross: bool = False,
    concentration: np.ndarray | None = None,
) -> np.ndarray:
    """Which candidate pairs are duplicates: similar enough (``min_similarity``) and standing
    out from each image's other candidates (the ratio test, ``max_distance_ratio``); or in
    the band (``band_min_similarity``, a ``residual_concentration`` of at most
    ``max_residual_concentration``) and passing the stricter ``band_max_distance_ratio``.
    With ``cross`` rows and cols index two different sets (queries, database). (len(rows),)
    bool."""  # fmt: skip
    offset = int(rows.max()) + 1 if cross and len(rows) else 0
    a, b = rows, cols + offset
    distance = 1.0 - sims.astype(np.float64)
    reference = np.minimum(_rank_distance(a, b, distance, cfg.ratio_rank),
                           _rank_distance(b, a, distance, cfg.ratio_rank))  # fmt: skip
    sure = (sims >= cfg.min_similarity) & (distance <= cfg.max_distance_ratio * reference)
    if concentration is None:
        return sure
    band = (sims >= cfg.band_min_similarity) & (concentration <= cfg.max_residual_concentration)
    return sure | (band & (distance <= cfg.band_max_distance_ratio * reference))


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
    thumbs: np.ndarray, cfg: MatchConfig, resolution: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Verified pairs i < j among (n, VIEWS, T, T, 3) thumbnails, with their similarity."""
    rows, cols, sims = candidate_similarities(thumbs, cfg, resolution)
    keep = verify(thumbs, thumbs, rows, cols, sims, cfg, resolution, resolution)
    return rows[keep], cols[keep], sims[keep]


def cross_matches(
    queries: np.ndarray,
    db: np.ndarray,
    cfg: MatchConfig,
    query_resolution: np.ndarray | None = None,
    db_resolution: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Verified pairs (query i, database j) between two thumbnail sets, with similarity.
    Decontamination's matcher: without the local-difference veto, so it errs towards a
    match (a look-alike of an evaluation image costs one training sample, a missed copy
    biases the benchmark)."""
    rows, cols = candidate_pairs(db, cfg, queries)
    sims = pair_similarity(queries, db, rows, cols, query_resolution, db_resolution)
    keep = verify(queries, db, rows, cols, sims, cfg, query_resolution, db_resolution,
                  cross=True, local_veto=False)  # fmt: skip
    return rows[keep], cols[keep], sims[keep]
