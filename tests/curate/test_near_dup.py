"""Near-duplicate matching: the stored hash keeps its bits, the matcher finds planted copies
and keeps look-alikes apart (on a small fixed sample of the quality harness)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageEnhance

from demo import offline_data
from demo.offline_data import fashion_mnist
from tasks.core.config import CurateConfig
from tasks.curate.dedup import match_config
from tasks.curate.features import FEATURE_SCHEMA, inspect_image
from tasks.curate.near_dup import (
    cross_matches,
    image_thumbnail,
    near_duplicate_pairs,
    pair_similarity,
    thumbnails_array,
    thumbnails_resolution,
)
from tasks.curate.phash import flatten_alpha, phash64


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _stored_hash(value: object) -> int:
    """A phash cell as read back, as the unsigned 64-bit integer it stands for."""
    if isinstance(value, bytes):
        return int.from_bytes(value, "big")
    return int(value) & 0xFFFFFFFFFFFFFFFF  # type: ignore[call-overload]


def test_hash_column_round_trips_exactly_through_parquet(tmp_path):
    images, _ = fashion_mnist("test")
    pictures = [Image.fromarray(images[k]) for k in range(50)]
    infos = [inspect_image(_png(p)) for p in pictures]
    expected = [phash64(p) & 0xFFFFFFFFFFFFFFFF for p in pictures]
    assert sum(h >= 1 << 63 for h in expected) > 0  # the top bit is in use
    phash_type = FEATURE_SCHEMA.field("phash").type
    column = pa.array([info.phash for info in infos] + [None], phash_type)  # no image: NULL
    assert not pa.types.is_floating(phash_type)
    path = tmp_path / "features.parquet"
    pq.write_table(pa.table({"phash": column}), path)
    assert pq.read_table(path).column("phash").type == phash_type
    for read in (pq.read_table(path).column("phash").to_pylist(),
                 pd.read_parquet(path)["phash"].tolist()):  # fmt: skip
        assert read[-1] is None or pd.isna(read[-1])
        assert [_stored_hash(v) for v in read[:-1]] == expected


def _emoji_28px(unified: str) -> Image.Image:
    """A Google emoji as the demo downloads it: 28 px, transparency on white."""
    (entry,) = [e for e in offline_data.emoji() if e.unified == unified]
    with Image.open(entry.path) as image:
        return flatten_alpha(image).convert("RGB").resize((28, 28), Image.Resampling.LANCZOS)


def test_the_band_keeps_spread_differences_and_refuses_a_changed_detail():
    """Between near_dup_band_min_similarity and near_dup_min_similarity a pair is a duplicate
    only when what differs is spread over the picture: a 28 px emoji re-encoded at JPEG
    quality 30 is one; distinct emoji drawn alike (a man and a woman guard, two astronauts, a
    cat and a wry cat) differ in one place and stay apart, at the same similarities."""
    original = _emoji_28px("1F192")
    buf = io.BytesIO()
    original.save(buf, format="JPEG", quality=30)
    images = [original, Image.open(io.BytesIO(buf.getvalue())).convert("RGB")]
    alike = [("1F482-200D-2642-FE0F", "1F482-200D-2640-FE0F"),
             ("1F9D1-200D-1F680", "1F469-200D-1F680"), ("1F63C", "1F431")]  # fmt: skip
    images += [_emoji_28px(code) for pair in alike for code in pair]
    blobs = [image_thumbnail(image) for image in images]
    thumbs, resolution = thumbnails_array(blobs), thumbnails_resolution(blobs)
    cfg = match_config(CurateConfig())
    pairs = np.array([(0, 1), (2, 3), (4, 5), (6, 7)])
    sims = pair_similarity(thumbs, thumbs, pairs[:, 0], pairs[:, 1], resolution, resolution)
    assert ((sims >= cfg.band_min_similarity) & (sims < cfg.min_similarity)).all(), sims
    rows, cols, _ = near_duplicate_pairs(thumbs, cfg, resolution)
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == [(0, 1)]


def _merged(a: Image.Image, b: Image.Image, cfg: CurateConfig) -> bool:
    blobs = [image_thumbnail(a), image_thumbnail(b)]
    thumbs, resolution = thumbnails_array(blobs), thumbnails_resolution(blobs)
    rows, _, _ = near_duplicate_pairs(thumbs, match_config(cfg), resolution)
    return len(rows) == 1


def _marked(image: Image.Image, x: int, y: int) -> Image.Image:
    """A copy with a round mark of 4 px (a seventh of the side) at (x, y)."""
    out = image.copy()
    ImageDraw.Draw(out).ellipse((x, y, x + 3, y + 3), fill=(20, 160, 60))
    return out


def test_the_local_difference_veto_refuses_a_changed_middle_and_keeps_a_mark_at_the_edge():
    """The outbox and inbox trays (1F4E4, 1F4E5) at 28 px differ only in the arrow and
    correlate 0.99 on the verification grid, as a copy does: the veto keeps them apart, and
    without it (near_dup_local_max_share 1) they merge. A mark in a corner (a watermark) and
    a brightness/contrast change that clips leave copies that still merge; the same mark in
    the middle of the picture is a changed detail and does not. Decontamination does without
    the veto: the inbox on the web matches the outbox among the evaluation images."""
    outbox, inbox = _emoji_28px("1F4E4"), _emoji_28px("1F4E5")
    cfg = CurateConfig()
    assert not _merged(outbox, inbox, cfg)
    blobs = [image_thumbnail(outbox), image_thumbnail(inbox)]
    thumbs, resolution = thumbnails_array(blobs), thumbnails_resolution(blobs)
    found, _, _ = cross_matches(thumbs[1:], thumbs[:1], match_config(cfg), resolution[1:],
                                resolution[:1])  # fmt: skip
    assert len(found) == 1
    assert _merged(outbox, inbox, CurateConfig(near_dup_local_max_share=1.0))
    brighter = ImageEnhance.Contrast(ImageEnhance.Brightness(inbox).enhance(1.2)).enhance(1.2)
    assert (np.asarray(brighter) == 255).mean() > (np.asarray(inbox) == 255).mean() + 0.02
    assert _merged(inbox, brighter, cfg)
    assert _merged(inbox, _marked(inbox, 23, 23), cfg)
    assert not _merged(inbox, _marked(inbox, 12, 16), cfg)
    assert _merged(inbox, _marked(inbox, 12, 16), CurateConfig(near_dup_local_max_share=1.0))


def test_each_window_is_its_crop_of_the_view_averaged_onto_the_grid():
    """The windows (two matrix products, in their own memory layout) against the plain
    definition: window w of a view is its vertical span x horizontal span of the view in
    verification space, area-averaged onto VERIFY_GRID x VERIFY_GRID cells, laid out as
    ``_full`` lays out the whole view (the whole-view window is ``_full`` itself)."""
    from tasks.curate import near_dup as nd

    images, _ = fashion_mnist("test")
    thumbs = thumbnails_array([image_thumbnail(Image.fromarray(images[k])) for k in range(6)])
    views = thumbs[:, 1]
    space = nd._verification_space(views)
    cells, inverse_norm = nd._windows(space)
    # What the matcher uses: a window's correlation with a centred unit vector.
    windows = (cells - cells.mean(axis=2, keepdims=True)) * inverse_norm[:, :, None]
    for w, (vertical, horizontal) in enumerate(nd._WINDOW_PAIRS):
        rows, cols = nd._SPAN_MATRICES[vertical], nd._SPAN_MATRICES[horizontal]
        plain = np.einsum("gt,mtuc,hu->mgch", rows, space, cols).reshape(6, -1)
        np.testing.assert_allclose(windows[:, w], nd._normalised(plain), atol=1e-5)
        partner = nd._normalised(np.roll(plain, 1, axis=0))  # another image's cells
        np.testing.assert_allclose((cells[:, w] * partner).sum(axis=1) * inverse_norm[:, w],
                                   (nd._normalised(plain) * partner).sum(axis=1), atol=1e-5)  # fmt: skip
    whole = [w for w, pair in enumerate(nd._WINDOW_PAIRS)
             if np.allclose(nd._SPAN_MATRICES[pair], nd._FULL_MATRIX)]  # fmt: skip
    assert len(whole) == 1
    np.testing.assert_allclose(windows[:, whole[0]], nd._full(views), atol=1e-5)


def test_a_blank_window_correlates_zero_not_its_rounding_noise():
    """A white view with a dark line along its left edge: the windows that leave the line out
    are plain white. Their cells differ from each other only by float32 rounding, which a
    variance taken from sums of squares would scale up to a correlation (the harness's 28 px
    brightness pool had a thin pen drawing correlate 21 with an arrow); they are blank."""
    from tasks.curate import near_dup as nd

    view = np.full((1, nd.THUMB, nd.THUMB, 3), 255.0, np.float32)
    view[0, :, :2] = 0.0
    cells, inverse_norm = nd._windows(nd._verification_space(view))
    covers_line = np.array([nd._SPAN_MATRICES[h][:, :2].sum() > 0 for _, h in nd._WINDOW_PAIRS])
    assert (~covers_line).any() and covers_line.any()
    assert (inverse_norm[0, ~covers_line] == 0).all()
    assert (inverse_norm[0, covers_line] > 0).all()
    partner = nd._normalised(cells[0, covers_line][:1])  # a window that shows the line
    correlation = (cells[0] @ partner.T)[:, 0] * inverse_norm[0]
    assert np.abs(correlation).max() <= 1 + 1e-5
    assert correlation[covers_line].max() > 0.99


def _trim_line_by_line(pixels: np.ndarray) -> np.ndarray:
    """The plain definition of one trim pass: strip a line at a time, top, bottom, left, right,
    while it is uniform (80 % of its pixels within 40 of the corners' median colour in every
    channel) and more than two lines are left."""

    def uniform(line: np.ndarray) -> bool:
        return bool((np.abs(line.astype(np.int16) - colour).max(axis=1) <= 40).mean() >= 0.8)

    h, w = pixels.shape[:2]
    colour = np.median(np.stack([pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]])
                       .astype(np.int16), axis=0)  # fmt: skip
    top, bottom, left, right = 0, h, 0, w
    while bottom - top > 2 and uniform(pixels[top, left:right]):
        top += 1
    while bottom - top > 2 and uniform(pixels[bottom - 1, left:right]):
        bottom -= 1
    while right - left > 2 and uniform(pixels[top:bottom, left]):
        left += 1
    while right - left > 2 and uniform(pixels[top:bottom, right - 1]):
        right -= 1
    if bottom - top <= 2 or right - left <= 2:
        return pixels
    return pixels[top:bottom, left:right]


def test_trimming_strips_the_lines_the_plain_definition_strips():
    """The trim (whole-image masks) against the line-at-a-time definition, on 3,000 random
    images: borders of random widths and colours, noise within and beyond the tolerance,
    tiny and blank images, and every Fashion-MNIST test image of the first 500."""
    from tasks.curate import near_dup as nd

    rng = np.random.default_rng(0)
    images, _ = fashion_mnist("test")
    cases = [np.repeat(images[k][:, :, None], 3, axis=2) for k in range(500)]
    for _ in range(2500):
        h, w = rng.integers(1, 40, size=2)
        image = np.full((h, w, 3), rng.integers(0, 256, size=3), np.uint8)
        t, b, left, r = rng.integers(0, h // 2 + 1, size=2).tolist() + rng.integers(
            0, w // 2 + 1, size=2).tolist()  # fmt: skip
        inner = image[t : h - b, left : w - r]
        inner[...] = rng.integers(0, 256, size=inner.shape)
        if rng.random() < 0.5:  # borders that are near, or just beyond, the tolerance
            image = np.clip(image + rng.integers(-45, 46, size=image.shape), 0, 255)
        cases.append(image.astype(np.uint8))
    for image in cases:
        np.testing.assert_array_equal(nd._trim_once(image), _trim_line_by_line(image))


def test_verification_is_the_same_on_one_thread_and_on_several(monkeypatch):
    """The verification's chunks of source images run on threads; the similarities must
    not depend on how many (each chunk writes only its own pairs, BLAS at one thread)."""
    from tasks.curate import near_dup as nd

    images, _ = fashion_mnist("test")
    blobs = [image_thumbnail(Image.fromarray(images[k])) for k in range(400)]
    thumbs, resolution = thumbnails_array(blobs), thumbnails_resolution(blobs)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 400, 3000), rng.integers(0, 400, 3000)  # > 3 chunks each way
    found = {}
    for threads in (1, 3):
        monkeypatch.setattr(nd, "_chunk_threads", lambda threads=threads: threads)
        found[threads] = pair_similarity(thumbs, thumbs, rows, cols, resolution, resolution)
    assert np.array_equal(found[1], found[3])
    assert (found[1] > -1).all()  # every pair was computed


def test_candidate_vectors_are_the_plain_cell_means_bit_for_bit(monkeypatch):
    """The candidate vectors (cell sums as matrix products, in chunks) against the plain
    definition: each view's CANDIDATE_GRID x CANDIDATE_GRID cell means per channel, centred
    and normalised; equal bit for bit, across chunk boundaries, on extreme values too."""
    from tasks.curate import near_dup as nd

    monkeypatch.setattr(nd, "_CANDIDATE_CHUNK", 7)  # several chunks and a short last one
    rng = np.random.default_rng(0)
    thumbs = rng.integers(0, 256, (12, nd.VIEWS, nd.THUMB, nd.THUMB, 3), dtype=np.uint8)
    thumbs[0] = 255  # the largest sums; a blank view stays a zero vector
    thumbs[1, 0] = 0
    step = nd.THUMB // nd.CANDIDATE_GRID
    views = thumbs.reshape(-1, nd.CANDIDATE_GRID, step, nd.CANDIDATE_GRID, step, 3)
    plain = views.astype(np.float64).mean(axis=(2, 4)).astype(np.float32) * (step * step)
    want = nd._normalised(plain.reshape(len(plain), -1))
    got = nd.candidate_vectors(thumbs)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want)
    assert not got[0].any() and not got[2].any()
