-- Headline numbers for summary.json.
SELECT
    count(*) AS input,
    count(*) FILTER (WHERE keep) AS kept,
    count(*) FILTER (WHERE caption IS NULL) AS null_captions,
    count(*) FILTER (WHERE caption IS NOT NULL AND trim(caption) = '') AS empty_captions,
    count(*) FILTER (WHERE drop_eval_contamination) AS eval_contaminated,
    count(*) FILTER (WHERE duplicate_of IS NOT NULL) AS duplicates,
    count(DISTINCT download_shard) AS shards,
    count(DISTINCT download_shard) FILTER (WHERE image_state = 'shard_truncated')
        AS truncated_shards,
    median(caption_chars) FILTER (WHERE keep) AS kept_median_caption_chars,
    median(least(original_width, original_height)) FILTER (WHERE keep) AS kept_median_min_side
FROM curated
