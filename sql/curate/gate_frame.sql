-- The table the great-expectations suite validates: every row, with kept-only columns NULL
-- on dropped rows (column-map expectations skip NULLs, so they judge the kept rows only).
SELECT
    key,
    keep::INTEGER AS kept,
    (drop_duplicate_key OR drop_duplicate_sha256 OR drop_duplicate_url
        OR drop_duplicate_caption_image OR drop_near_duplicate OR drop_semantic_duplicate
    )::INTEGER AS duplicate,
    nullif(trim(caption), '') AS caption_present,
    CASE WHEN keep THEN key END AS kept_key,
    CASE WHEN keep THEN caption END AS kept_caption,
    CASE WHEN keep THEN caption_chars END AS kept_caption_chars,
    CASE WHEN keep THEN least(original_width, original_height) END AS kept_min_side,
    CASE WHEN keep THEN greatest(original_width, original_height)::DOUBLE
        / nullif(least(original_width, original_height), 0) END AS kept_aspect_ratio
FROM curated
ORDER BY rid
