"""The curate rules past DuckDB's memory limit: over partitioned Parquet about twice
``curate.duckdb_memory_limit``, the stage's connection spills to ``curate.duckdb_temp_dir``
and gets the unlimited answer; without a spill folder the same query runs out of memory."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from tasks.core.config import CurateConfig
from tasks.core.sql import connect, run_sql
from tasks.curate.rules import apply_rules
from tasks.curate.stage import open_database

ROWS = 700_000
PARTS = 4
LIMIT_BYTES = 64 * 2**20
DIGEST = (
    "SELECT count(*), count(*) FILTER (WHERE drop_duplicate_key),"
    " count(*) FILTER (WHERE drop_download_failed), bit_xor(hash(rules)) FROM rules"
)
RAW_BYTES = (
    "SELECT sum(8 * 9 + strlen(key) + strlen(url_host) + strlen(page_host) + strlen(caption)"
    " + strlen(caption_norm) + strlen(status) + strlen(image_state) + strlen(language))"
    " FROM features"
)


def _write_parts(folder: Path, keys_in_order: bool) -> list[str]:
    """ROWS feature rows in PARTS Parquet files; every 44-character key twice. In key order
    the duplicate-key rule reads them in one pass; out of it, its hash check partitions the
    whole table by key (sql/curate/rules.sql): both must spill."""
    # 7,919 is prime to ROWS, so i -> i * 7,919 mod ROWS is a permutation: each key twice.
    position = "i" if keys_in_order else f"i * 7919 % {ROWS}"
    folder.mkdir()
    gen = duckdb.connect()
    files = []
    for p in range(PARTS):
        path = folder / f"part-{p}.parquet"
        lo, hi = p * ROWS // PARTS, (p + 1) * ROWS // PARTS
        gen.execute(f"""
            COPY (
                SELECT i AS rid, 'key-' || lpad(({position} // 2)::VARCHAR, 40, '0') AS key,
                    'cdn' || i % 500 || '.site.com' AS url_host,
                    'cdn' || i % 500 || '.site.com' AS page_host,
                    'a photo of thing ' || i * 7919 % 1000003 || ' on a table' AS caption,
                    'a photo of thing ' || i * 7919 % 1000003 || ' on a table' AS caption_norm,
                    7::BIGINT AS caption_words,
                    CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'success' END AS status,
                    'ok' AS image_state, FALSE AS caption_invalid_utf8,
                    NULL::BIGINT AS caption_original_chars,
                    (i % 300)::BIGINT AS original_width, (i % 200 + 1)::BIGINT AS original_height,
                    64::BIGINT AS image_width, 64::BIGINT AS image_height,
                    'en' AS language, (i % 100) / 100.0 AS language_confidence,
                    (i % 100) / 100.0 AS language_allowed_probability,
                    NULL::DOUBLE AS clip_score
                FROM range({lo}, {hi}) AS t(i)
            ) TO '{path}' (FORMAT parquet)
        """)
        files.append(str(path))
    gen.close()
    return files


@pytest.mark.parametrize("keys_in_order", [True, False], ids=["keys in order", "keys unordered"])
def test_rules_spill_past_the_memory_limit_with_the_unlimited_answer(
    tmp_path: Path, keys_in_order: bool
):
    files = _write_parts(tmp_path / "parts", keys_in_order)
    cfg = CurateConfig(duckdb_memory_limit="64MB", duckdb_temp_dir=str(tmp_path / "spill"))

    unlimited = connect(":memory:")
    run_sql(unlimited, "curate/load_features", {"files": files})
    (raw,) = unlimited.execute(RAW_BYTES).fetchone() or (0,)
    assert raw >= 2 * LIMIT_BYTES  # the table is twice the limit, before any compression
    apply_rules(unlimited, cfg)
    expected = unlimited.execute(DIGEST).fetchall()
    unlimited.close()
    assert expected[0][:3] == (ROWS, ROWS // 2, ROWS // 10)

    con = open_database(cfg, str(tmp_path))  # the stage's connection
    try:
        assert con.execute("SELECT current_setting('memory_limit')").fetchone() == ("61.0 MiB",)
        run_sql(con, "curate/load_features", {"files": files})
        apply_rules(con, cfg)
        assert con.execute(DIGEST).fetchall() == expected
        assert (tmp_path / "spill").is_dir()  # made at the first spill, removed on close
    finally:
        con.close()

    loaded = str(tmp_path / "no-spill.duckdb")
    con = connect(loaded)
    run_sql(con, "curate/load_features", {"files": files})
    con.close()
    con = connect(loaded, cfg.duckdb_memory_limit, "")  # "": nowhere to spill
    try:
        with pytest.raises(duckdb.OutOfMemoryException):
            apply_rules(con, cfg)
    finally:
        con.close()


def test_memory_limit_is_validated():
    with pytest.raises(ValueError, match="duckdb_memory_limit"):
        CurateConfig(duckdb_memory_limit="lots")
    assert CurateConfig(duckdb_memory_limit="1.5GiB").duckdb_memory_limit == "1.5GiB"


def test_the_stage_database_defaults_to_duckdbs_own_settings(tmp_path: Path):
    con = open_database(CurateConfig(), str(tmp_path))
    try:
        (spill,) = con.execute("SELECT current_setting('temp_directory')").fetchone() or ("",)
        assert spill == str(tmp_path / "curate.duckdb.tmp")
        assert con.execute("SELECT current_setting('memory_limit')").fetchone() != ("61.0 MiB",)
    finally:
        con.close()
