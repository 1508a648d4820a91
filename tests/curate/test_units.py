"""Plain functions of the curate stage on tiny inputs: pHash, FAISS pair search against brute
force, grouping, SemDeDup, caption handling, the SQL loader and the rule order."""

from __future__ import annotations

import io
import re

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from demo.offline_data import fashion_mnist
from tasks.core.config import CurateConfig
from tasks.core.languages import FASTTEXT_LANGUAGES, LANGID_LANGUAGES
from tasks.core.sql import SQL_DIR, bind, load_sql, run_sql
from tasks.curate import dedup
from tasks.curate.dedup import (
    BinaryIndexSpec,
    decontamination_matches,
    embedding_pairs,
    hamming_pairs,
    match_config,
    multihash_layout,
    survivors_of,
)
from tasks.curate.features import (
    FEATURE_SCHEMA,
    decode_caption,
    inspect_image,
    normalise_caption,
    url_host,
)
from tasks.curate.near_dup import image_thumbnail, thumbnails_array, thumbnails_resolution
from tasks.curate.phash import hamming, hashes_to_bytes, phash64
from tasks.curate.rules import RULES, apply_rules, rule_parameters
from tasks.download.pinned_http import Destination


def _planted_hashes(n: int, pairs: int, radius: int, seed: int = 0) -> tuple[np.ndarray, set]:
    """n random 64-bit hashes; the last `pairs` are copies of earlier ones with <= radius bits
    flipped. Returns the hashes and the brute-force set of pairs within radius."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64)
    for k in range(pairs):
        flips = rng.choice(64, size=rng.integers(0, radius + 1), replace=False)
        mask = sum(1 << int(b) for b in flips)
        value = (int(hashes[k]) & 0xFFFFFFFFFFFFFFFF) ^ mask
        hashes[n - pairs + k] = value - (1 << 64) if value >= 1 << 63 else value
    codes = hashes_to_bytes(hashes)
    distance = np.unpackbits(codes[:, None, :] ^ codes[None, :, :], axis=2).sum(axis=2)
    i, j = np.nonzero(np.triu(distance <= radius, k=1))
    return hashes, set(zip(i.tolist(), j.tolist(), strict=True))


@pytest.mark.parametrize("kind", ["flat", "multihash", "ivf"])
def test_hamming_pairs_match_brute_force(kind):
    hashes, truth = _planted_hashes(600, 40, radius=4)
    rows, cols = hamming_pairs(hashes_to_bytes(hashes), 4, BinaryIndexSpec(kind, ivf_nprobe=64))
    found = set(zip(rows.tolist(), cols.tolist(), strict=True))
    assert found <= truth  # every reported pair is really within the radius
    if kind != "ivf":  # flat and multi-index hashing are exact
        assert found == truth
    else:
        assert len(found) >= 0.9 * len(truth)


@pytest.mark.parametrize(("nhash", "nflip"), [(5, 0), (3, 1), (4, 1), (2, 2)])
def test_every_exact_multihash_layout_finds_every_pair(nhash, nflip):
    hashes, truth = _planted_hashes(600, 40, radius=4)
    spec = BinaryIndexSpec("multihash", nhash=nhash, nflip=nflip)
    rows, cols = hamming_pairs(hashes_to_bytes(hashes), 4, spec)
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == truth


def test_multihash_layout_trades_substrings_for_flips_as_n_grows():
    assert multihash_layout(1_000, 4)[:2] == (5, 0)  # near-empty buckets: no flips needed
    assert multihash_layout(1_000_000, 4)[:2] == (3, 1)  # 12-bit buckets would hold ~244
    with pytest.raises(ValueError, match="misses pairs"):
        hamming_pairs(np.zeros((4, 8), np.uint8), 4, BinaryIndexSpec("multihash", nhash=4))


def test_survivors_follow_groups_and_prefer_lowest_index():
    survivor = survivors_of(6, np.array([1, 3, 4]), np.array([3, 4, 5]))
    assert survivor.tolist() == [0, 1, 2, 1, 1, 1]


def test_semdedup_finds_planted_near_identical_embeddings():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 32)).astype(np.float32)
    x[390:] = x[:10] + 0.01 * rng.standard_normal((10, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows, cols = embedding_pairs(x, eps=0.01, clusters=8, nprobe=8)
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == {(k, 390 + k) for k in range(10)}


@pytest.mark.parametrize("block", [1 << 24, 7])  # 7: every matrix product split in chunks
def test_semdedup_probing_every_cluster_equals_brute_force(monkeypatch, block):
    monkeypatch.setattr(dedup, "_BLOCK_ELEMENTS", block)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((600, 3)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    i, j = np.nonzero(np.triu(x @ x.T > 1.0 - 0.05, k=1))
    truth = set(zip(i.tolist(), j.tolist(), strict=True))
    assert len(truth) > 100  # pairs everywhere, many across cluster borders
    everywhere = embedding_pairs(x, eps=0.05, clusters=8, nprobe=8)
    assert set(zip(*(a.tolist() for a in everywhere), strict=True)) == truth
    homes_only = embedding_pairs(x, eps=0.05, clusters=8, nprobe=1)
    found = set(zip(*(a.tolist() for a in homes_only), strict=True))
    assert found < truth  # SemDeDup proper misses the pairs split across clusters


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_phash_is_stable_under_resizing_and_recompression_and_separates_images():
    images, _ = fashion_mnist("test")
    a, b = Image.fromarray(images[0]), Image.fromarray(images[1])
    big = a.resize((112, 112), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=60)
    jpeg = Image.open(io.BytesIO(buf.getvalue()))
    assert hamming(phash64(a), phash64(big)) <= 4
    assert hamming(phash64(a), phash64(jpeg)) <= 4
    assert hamming(phash64(a), phash64(b)) > 8
    hashes = np.array([phash64(Image.fromarray(images[k])) for k in range(3)], dtype=np.uint64)
    assert hashes_to_bytes(hashes).shape == (3, 8)


def test_decontamination_matches_name_the_eval_image():
    images, _ = fashion_mnist("test")
    evals = [Image.fromarray(images[k]) for k in range(20)]
    train = [
        evals[3].resize((112, 112), Image.Resampling.NEAREST),  # an upscaled copy
        Image.fromarray(images[100]),  # another image of the test set, not an eval image
        Image.open(io.BytesIO(_jpeg(evals[7], 60))),  # a re-encoded copy
    ]
    found = decontamination_matches(
        thumbnails_array([image_thumbnail(p) for p in train]),
        thumbnails_array([image_thumbnail(p) for p in evals]),
        [f"e/{k}" for k in range(20)],
        match_config(CurateConfig()),
    )
    assert found == {0: "e/3", 2: "e/7"}


def test_a_copy_shrunk_on_the_web_is_compared_at_its_own_resolution():
    """A 28 px garment shrunk to 14 px on the web, then upscaled to 28 px by the download,
    lost half its detail: sharp, it does not pass verification against its original; compared
    at 14 px, it does. The download's sizes say so (``native_detail``, 14/28). (The band of
    lower similarities is off here: it would accept this copy sharp too.)"""
    images, _ = fashion_mnist("test")
    evals = [Image.fromarray(images[k]) for k in range(40)]
    shrunk = evals[5].resize((14, 14), Image.Resampling.BICUBIC)
    downloaded = shrunk.resize((28, 28), Image.Resampling.BICUBIC)
    train_blobs, eval_blobs = [image_thumbnail(downloaded)], [image_thumbnail(p) for p in evals]
    args = (thumbnails_array(train_blobs), thumbnails_array(eval_blobs),
            [f"e/{k}" for k in range(40)],
            match_config(CurateConfig(near_dup_band_min_similarity=1.0)))  # fmt: skip
    assert decontamination_matches(*args) == {}  # sharp: the lost detail looks like a change
    found = decontamination_matches(
        *args, thumbnails_resolution(train_blobs, np.array([0.5])),
        thumbnails_resolution(eval_blobs),
    )  # fmt: skip
    assert found == {0: "e/5"}


def test_thumbnail_resolution_is_the_web_images_pixels_across_each_view():
    picture = Image.new("RGB", (40, 30), "white")
    picture.paste(Image.new("RGB", (20, 10), "navy"), (10, 10))
    blob = image_thumbnail(picture)
    np.testing.assert_array_equal(thumbnails_resolution([blob]), [[[30, 40], [10, 20]]])
    np.testing.assert_array_equal(thumbnails_resolution([blob], np.array([0.5])),
                                  [[[15, 20], [5, 10]]])  # fmt: skip
    np.testing.assert_array_equal(
        thumbnails_resolution([blob], np.array([3.0])), [[[30, 40], [10, 20]]]
    )  # a downscale keeps the stored pixels


def test_native_detail_is_the_web_images_side_over_the_stored_ones():
    sizes = [("ok", 14, 14, 28, 28), ("ok", 64, 64, 28, 28), ("ok", None, None, 28, 28),
             ("ok", 10, 40, 28, 28), ("undecodable", 14, 14, None, None)]  # fmt: skip
    names = ("image_state", "original_width", "original_height", "image_width", "image_height")
    con = duckdb.connect()
    con.register("features", _features([dict(zip(names, row, strict=True)) for row in sizes]))
    apply_rules(con, CurateConfig())
    rows = run_sql(con, "curate/hashed_rows").fetchall()
    # 14 -> 28: half the pixels are its own; a downscale and unknown sizes: all of them. A
    # 10 x 40 image was upscaled along one side only: the larger share is taken, so an
    # unsure case is compared sharp (which merges less).
    assert [(rid, detail) for rid, _, detail in rows] == [(0, 0.5), (1, 1.0), (2, 1.0),
                                                          (3, 1.0)]  # fmt: skip


def test_inspect_image_states():
    good = inspect_image(_png(Image.new("RGB", (20, 10), "red")))
    assert (good.state, good.width, good.height) == ("ok", 20, 10)
    assert inspect_image(b"").state == "empty"
    assert inspect_image(b"\x89PNG\r\n\x1a\n truncated").state == "undecodable"


def test_caption_decoding_and_normalisation():
    assert decode_caption("café".encode()) == ("café", False)
    text, bad = decode_caption(b"caf\xe9")
    assert bad and "\ufffd" in text
    assert decode_caption(None) == (None, False)
    assert normalise_caption("  A   Red\tApple!! ") == "a red apple"
    assert normalise_caption("ＩＭＧ_0001.JPG") == "img_0001.jpg"  # NFKC folds full width


def test_combine_sql_lists_rules_in_rules_order():
    reasons = re.findall(r"THEN '([a-z0-9_]+)' END", load_sql("curate/combine"))
    assert tuple(reasons) == RULES


def test_sql_loader_errors_name_the_query():
    with pytest.raises(FileNotFoundError, match="no_such_query"):
        load_sql("curate/no_such_query")
    with pytest.raises(KeyError, match="min_image_side"):
        bind("curate/rules", {})
    assert all(p.name.endswith(".sql") for p in SQL_DIR.joinpath("curate").iterdir())


def _features(rows: list[dict]) -> pa.Table:
    """A `features` table (FEATURE_SCHEMA plus rid) from a few partial rows."""
    full = [{name: row.get(name) for name in FEATURE_SCHEMA.names} for row in rows]
    table = pa.Table.from_pylist(full, schema=FEATURE_SCHEMA)
    return table.add_column(0, "rid", pa.array(range(len(rows)), pa.int64()))


def _rule_flags(rows: list[dict], cfg: CurateConfig, rule: str) -> list[bool]:
    con = duckdb.connect()
    con.register("features", _features(rows))
    apply_rules(con, cfg)
    return [
        flag for (flag,) in con.execute(f"SELECT drop_{rule} FROM rules ORDER BY rid").fetchall()
    ]


def test_blank_caption_rule_is_exactly_duckdb_trim():
    """The rule's cheap prefilter must not change what trim() calls blank."""
    captions = [None, "", " ", "\u3000", "\u00a0 \u2003", " a", "a ", "\t", "!", "\u00e9", "~ "]
    flags = _rule_flags([{"caption": c} for c in captions], CurateConfig(), "caption_missing")
    con = duckdb.connect()
    trimmed = [c is None or con.execute("SELECT trim(?) = ''", [c]).fetchone()[0] for c in captions]
    assert flags == trimmed
    assert flags[:5] == [True] * 5 and not any(flags[5:])


def test_duplicate_keys_after_the_first_and_blocked_hosts_are_flagged():
    rows = [
        {"key": "a", "url_host": "cdn.spam.example", "page_host": "ok.org"},
        {"key": "b", "url_host": "ok.org", "page_host": "spam.example"},
        {"key": "a", "url_host": "notspam.example", "page_host": "ok.org"},
        {"key": "c", "url_host": None, "page_host": None},
        {"key": "a", "url_host": "ok.org", "page_host": "ok.org"},
    ]
    cfg = CurateConfig(url_blocklist=["spam.example"])
    assert _rule_flags(rows, cfg, "duplicate_key") == [False, False, True, False, True]
    assert _rule_flags(rows, cfg, "url_blocked") == [True, True, False, False, False]


@pytest.mark.parametrize(
    "read_order",
    ["key then rid", "key then rid, descending", "key, NULL first", "shuffled", "rid"],
)
def test_duplicate_key_flags_each_repeat_after_the_lowest_rid_in_any_read_order(read_order):
    """The rule reads keys in one pass where the table is in (key, rid) order and falls back
    to hashing otherwise (sql/curate/rules.sql): every order must give the same flags."""
    rng = np.random.default_rng(7)
    keys = [None if k == 0 else f"{k:03d}" for k in rng.integers(0, 60, size=400)]
    if read_order != "key, NULL first":
        keys = [k or "000" for k in keys]
    table = _features([{"key": k} for k in keys])  # rid = position in `keys`
    seen: set[str | None] = set()
    expected = []
    for k in keys:
        expected.append(k in seen)
        seen.add(k)
    assert 0 < sum(expected) < len(keys)
    by = {"key then rid": [("key", "ascending", "at_end"), ("rid", "ascending")],
          "key then rid, descending": [("key", "ascending", "at_end"), ("rid", "descending")],
          "key, NULL first": [("key", "ascending", "at_start"), ("rid", "ascending")]}  # fmt: skip
    if read_order in by:
        table = table.take(pc.sort_indices(table, by[read_order]))
    elif read_order == "shuffled":
        table = table.take(rng.permutation(len(keys)))
    con = duckdb.connect()
    con.register("features", table)
    apply_rules(con, CurateConfig())
    flags = con.execute("SELECT drop_duplicate_key FROM rules ORDER BY rid").fetchall()
    assert [flag for (flag,) in flags] == expected
    # ... and the one-pass path is the one taken exactly where (key, rid) ascends.
    text, _ = bind("curate/rules", rule_parameters(CurateConfig()))
    order_check = text[: text.index("repeated_key_hashes AS")].rstrip().removesuffix(",")
    (in_order,) = con.execute(f"{order_check} SELECT yes FROM keys_in_order").fetchone()
    assert in_order == (read_order == "key then rid")


def test_blocklist_sees_through_spellings_of_a_host_that_resolve_alike():
    """Each blocked URL below reaches a listed domain: getaddrinfo, and so every fetch here,
    IDNA-encodes the host (full-width letters and dots fold, "bücher" is "xn--bcher-kva")
    and ignores one trailing root dot. The rule must drop them; look-alikes stay."""
    blocked = [
        "http://spam.example./a.jpg",
        "http://CDN.Spam.Example:8080/a.jpg",
        "http://user@cdn.spam.example./a.jpg",
        "http://spam\uff0eexample/a.jpg",  # a full-width full stop
        "http://\uff53\uff50\uff41\uff4d.example/a.jpg",  # full-width letters
        "http://img.spam.example\u3002/a.jpg",  # an ideographic full stop as the root dot
        "http://xn--bcher-kva.example/a.jpg",
        "http://www.B\u00dcCHER.example/a.jpg",
    ]
    kept = [
        "http://notspam.example/a.jpg",
        "http://spam.example.org/a.jpg",
        "http://ok.org/spam.example/a.jpg",
        "http://bucher.example/a.jpg",
    ]
    rows = [{"url_host": url_host(u), "page_host": "ok.org"} for u in blocked + kept]
    rows.append({"url_host": "ok.org", "page_host": url_host("http://SPAM.example./page")})
    cfg = CurateConfig(url_blocklist=["spam.example", "b\u00fccher.example"])
    flags = _rule_flags(rows, cfg, "url_blocked")
    assert flags == [True] * len(blocked) + [False] * len(kept) + [True]
    # The download's fetch refuses the same hosts, on every redirect hop (pinned_http).
    fetch = Destination(allow_private=False, blocked=frozenset(cfg.url_blocklist))
    assert [fetch.blocklist_refusal(u) is not None for u in blocked + kept] == (
        [True] * len(blocked) + [False] * len(kept)
    )


def test_blocklist_entries_take_the_form_hosts_are_compared_in():
    """An entry is matched as the resolver would spell it; a URL, a path or a name no
    resolver accepts would never match anything, so the config refuses it."""
    spellings = ["B\u00fccher.Example.", "xn--bcher-kva.example", ".b\u00fccher.example",
                 "*.b\u00fccher.example"]  # fmt: skip
    assert {tuple(CurateConfig(url_blocklist=[s]).url_blocklist) for s in spellings} == {
        ("xn--bcher-kva.example",)
    }
    for bad in ["http://spam.example/", "spam.example/ads", "spam example", "a..b", "", "*",
                "x" * 64 + ".example"]:  # fmt: skip
        with pytest.raises(ValueError, match="url_blocklist"):
            CurateConfig(url_blocklist=[bad])


def test_allowed_languages_are_codes_the_language_id_names():
    """A code neither identifier emits would make the language rule drop every caption it
    judges."""
    from tasks.curate.language import _fasttext, _loaded

    assert {str(c) for c in _loaded().nb_classes} == LANGID_LANGUAGES
    labels, _ = _fasttext().predict("x", k=-1, threshold=-1.0)
    assert {label.removeprefix("__label__") for label in labels} == FASTTEXT_LANGUAGES
    assert CurateConfig(allowed_languages=["EN", " de "]).allowed_languages == ["en", "de"]
    assert CurateConfig(allowed_languages=["ceb", "sco"]).allowed_languages == ["ceb", "sco"]
    assert CurateConfig(allowed_languages=[]).allowed_languages == []
    for bad in (["eng"], ["en-US"], ["english"], ["en", "zh-CN"]):
        with pytest.raises(ValueError, match="allowed_languages"):
            CurateConfig(allowed_languages=bad)


def test_boilerplate_entries_are_normalised_as_captions_are():
    """The list is compared with caption_norm (NFKC, lower case, single spaces, no edge
    punctuation): an entry written "Click here!" must drop the caption "CLICK HERE!!"."""
    cfg = CurateConfig(
        boilerplate_captions=["Click here!", "Untitled  Image", "\uff4c\uff4f\uff47\uff4f"]
    )
    captions = ["CLICK HERE!!", "click here", "untitled image.", "Logo", "click here to buy now"]
    rows = [
        {"caption_norm": normalise_caption(c), "caption_words": len(c.split())} for c in captions
    ]
    assert _rule_flags(rows, cfg, "caption_boilerplate") == [True, True, True, True, False]


def test_filename_pattern_is_checked_in_duckdbs_regex_dialect_when_the_config_is_read():
    """A pattern DuckDB (RE2) cannot compile is refused up front, not after the feature pass;
    RE2's dialect is the one checked: Python's re would take a lookbehind and refuse \\pL."""
    for bad in ["(", "[a-", "(?<=img)_\\d+", "(img)_\\1"]:
        with pytest.raises(ValueError, match="boilerplate_filename_pattern"):
            CurateConfig(boilerplate_filename_pattern=bad)
    unicode_letters = CurateConfig(boilerplate_filename_pattern="\\pL+\\.jpg")
    rows = [{"caption_norm": "café.jpg", "caption_words": 1}]
    assert _rule_flags(rows, unicode_letters, "caption_boilerplate") == [True]


def test_a_clip_score_threshold_without_a_scorer_is_refused():
    """Without clip_score_checkpoint no row has a score, so the threshold would keep all."""
    for threshold in ({"clip_score_min": 0.28}, {"clip_score_top_fraction": 0.3}):
        with pytest.raises(ValueError, match="clip_score_checkpoint"):
            CurateConfig(**threshold)
        CurateConfig(**threshold, clip_score_checkpoint="runs/clip/latest.pt")


def test_url_host_of_names_no_resolver_accepts_is_none():
    for url in ["http://[::1/a.jpg", "http://a..b/a.jpg", f"http://{'x' * 64}.example/a.jpg", ""]:
        assert url_host(url) is None, url
    assert url_host("http://[::1]:8080/a.jpg") == "::1"
    assert url_host("http://127.0.0.1/a.jpg") == "127.0.0.1"


def test_keys_whose_32_bit_hashes_collide_are_not_duplicates():
    """The duplicate-key rule sorts 32-bit key hashes; colliding keys must be told apart."""
    pair = ["key54829", "key77663"]
    distinct = "SELECT count(DISTINCT (hash(k) >> 32)::UINTEGER) FROM unnest(?) t(k)"
    collide = duckdb.connect().execute(distinct, [pair]).fetchall() == [(1,)]
    assert collide, "DuckDB's hash changed: pick a colliding pair again"
    rows = [{"key": pair[0]}, {"key": pair[1]}, {"key": pair[0]}]
    assert _rule_flags(rows, CurateConfig(), "duplicate_key") == [False, False, True]


def test_too_long_judges_the_caption_as_found_before_the_crawl_cut_it():
    """The crawl cuts captions to crawl.max_caption_chars (1,000, as curate's limit): a
    5,000-character alt text reached curate as 1,000 characters and was kept. Without the
    length as found (another downloader's parquet) the caption's own length decides."""
    cut = "word " * 200
    rows = [
        {"caption": cut.strip(), "caption_original_chars": 5000},
        {"caption": cut.strip(), "caption_original_chars": 999},
        {"caption": cut.strip(), "caption_original_chars": None},
        {"caption": cut * 2, "caption_original_chars": None},
        {"caption": None, "caption_original_chars": 5000},
    ]
    assert _rule_flags(rows, CurateConfig(max_caption_chars=1000), "caption_too_long") == [
        True, False, False, True, True,
    ]  # fmt: skip


def test_status_language_and_boilerplate_rules_on_nulls():
    """NULL inputs: a missing status is a failed download; a missing language or caption is
    not a language or boilerplate drop (other rules name those rows)."""
    cfg = CurateConfig(allowed_languages=["en"], min_allowed_language_probability=0.05)
    status = [{"status": s} for s in ("success", None, "failed_to_download")]
    assert _rule_flags(status, cfg, "download_failed") == [False, True, True]
    long = "a caption long enough to judge"
    languages = [
        {"caption": long, "language_allowed_probability": 0.01},
        {"caption": long, "language_allowed_probability": 0.9},
        {"caption": long, "language_allowed_probability": None},
        {"caption": None, "language_allowed_probability": None},
        {"caption": long, "language_allowed_probability": 0.05},
    ]
    assert _rule_flags(languages, cfg, "language") == [True, False, False, False, False]
    captions = [
        {"caption_norm": "untitled", "caption_words": 1},
        {"caption_norm": "img_1234.jpg", "caption_words": 1},
        {"caption_norm": None, "caption_words": 0},
        {"caption_norm": "untitled", "caption_words": None},
        {"caption_norm": "a red bicycle", "caption_words": 3},
    ]
    assert _rule_flags(captions, cfg, "caption_boilerplate") == [True, True, False, False, False]


def _dedup_survivors(rows: list[dict]) -> dict[str, str]:
    """run_dedup over a few feature rows: each dropped row's url -> its survivor's url."""
    con = duckdb.connect()
    con.register("features", _features(rows))
    apply_rules(con, CurateConfig())
    run_sql(con, "curate/live")
    n = len(rows)
    con.register("contamination", pa.table({
        "rid": pa.array(range(n), pa.int64()), "drop_eval_contamination": pa.array([False] * n),
    }))  # fmt: skip
    outcome = dedup.run_dedup(con, CurateConfig())
    url_of = {row["key"]: row["url"] for row in rows}
    return {rows[rid]["url"]: url_of[key] for found in outcome.dropped.values()
            for rid, key in found.items()}  # fmt: skip


def test_a_duplicate_groups_survivor_follows_the_samples_not_their_keys():
    """Keys number the download's rows, and the download orders rows by a hash of the URL,
    which holds the web server's host and port: two runs over one web give one sample
    different keys. Which member of a duplicate group survives must not follow them."""
    images, _ = fashion_mnist("test")
    garment, shoe = Image.fromarray(images[0]), Image.fromarray(images[1])
    copy = Image.open(io.BytesIO(_jpeg(shoe, 90)))
    base = {"status": "success", "image_state": "ok", "caption": "a garment on a plain ground",
            "caption_norm": "a garment on a plain ground", "caption_words": 6,
            "original_width": 28, "original_height": 28, "image_width": 28, "image_height": 28}  # fmt: skip
    samples = [  # an exact pair (one image at two URLs) and a near pair (a re-encoded copy)
        {"url": "http://w/a.png", "sha256": "s1", "thumb": image_thumbnail(garment)},
        {"url": "http://w/b.png", "sha256": "s1", "thumb": image_thumbnail(garment)},
        {"url": "http://w/c.png", "sha256": "s2", "thumb": image_thumbnail(shoe)},
        {"url": "http://w/d.jpg", "sha256": "s3", "thumb": image_thumbnail(copy)},
    ]
    runs = []
    for keys in (["0", "1", "2", "3"], ["3", "2", "1", "0"]):
        rows = [base | sample | {"key": key} for sample, key in zip(samples, keys, strict=True)]
        runs.append(_dedup_survivors(rows))
    assert runs[0] == {"http://w/b.png": "http://w/a.png", "http://w/d.jpg": "http://w/c.png"}
    assert runs[1] == runs[0]


def test_the_near_threshold_gallery_shows_each_side_and_the_vetoed_pairs():
    """near_threshold_pairs.sql: the verified pairs closest above the threshold, the rejected
    ones closest below, and the most similar pairs the local-difference veto refused, each
    side at most $limit (a vetoed pair of 0.999 is not crowded out by plain rejections)."""
    con = duckdb.connect()
    con.execute("CREATE TABLE rules AS SELECT range AS rid, 'k' || range AS key, "
                "'s.tar' AS download_shard FROM range(12)")  # fmt: skip
    pairs = [  # rid_a, rid_b, similarity, verified, vetoed
        (0, 1, 0.995, True, False), (2, 3, 0.991, True, False), (4, 5, 0.993, True, False),
        (6, 7, 0.9995, False, False), (8, 9, 0.9990, False, False), (1, 2, 0.98, False, False),
        (10, 11, 0.9991, False, True), (3, 4, 0.992, False, True), (5, 6, 0.990, False, True),
    ]  # fmt: skip
    con.execute("CREATE TABLE near_pairs (rid_a BIGINT, rid_b BIGINT, similarity DOUBLE, "
                "verified BOOLEAN, vetoed BOOLEAN)")  # fmt: skip
    con.executemany("INSERT INTO near_pairs VALUES (?, ?, ?, ?, ?)", pairs)
    rows = run_sql(con, "curate/near_threshold_pairs", {"limit": 2}).fetchall()
    shown = [(r[0], r[2], r[5], r[6]) for r in rows]
    assert shown == [
        ("k6", "k7", False, False), ("k8", "k9", False, False),  # kept, closest below
        ("k4", "k5", True, False), ("k2", "k3", True, False),  # dropped, closest above
        ("k10", "k11", False, True), ("k3", "k4", False, True),  # refused by the veto
    ]  # fmt: skip


def test_the_inspect_app_shows_every_threshold_the_rules_read():
    """A rule's page in `clipflow inspect` lists the config values it compares against; one
    left out (the boilerplate list was) hides why a row was dropped."""
    from tasks.inspect.evaluation import RULE_THRESHOLDS

    shown = {name for names in RULE_THRESHOLDS.values() for name in names}
    read = {name for name in rule_parameters(CurateConfig()) if name in CurateConfig.model_fields}
    assert read - shown == set()


def test_words_of_scripts_written_without_spaces_are_counted():
    """The caption "冬用の黒いコート" (a black winter coat) is one whitespace token: with
    allowed_languages [ja] every such caption was dropped as caption_too_short
    (min_caption_words 2). Where a script has no spaces, words are Unicode's default word
    boundaries (UAX #29: an ideograph or a kana is a word, a katakana run one); elsewhere a
    word is a whitespace token."""
    from tasks.curate.captions import caption_word_count

    assert caption_word_count("冬用の黒いコート") == 6
    assert caption_word_count("スニーカー") == 1
    assert caption_word_count("my 冬用 coat") == 4
    spaced = ["IMG_1234.JPG", "a t-shirt", "don't stop", "pair of sneakers, size 9.5",
              "une robe rouge pour l'été", "Красное платье на лето", "  ", ""]  # fmt: skip
    assert [caption_word_count(c) for c in spaced] == [len(c.split()) for c in spaced]
    cfg = CurateConfig(allowed_languages=["ja"])
    rows = [{"caption": c, "caption_norm": c, "caption_words": caption_word_count(c)}
            for c in ("冬用の黒いコート", "コート")]  # fmt: skip
    assert _rule_flags(rows, cfg, "caption_too_short") == [False, True]
