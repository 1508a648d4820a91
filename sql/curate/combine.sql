-- Combine every rule's column into `reasons` (all rules that drop the row, in the fixed rule
-- order; a row is counted under its first reason) and `keep`.
-- The order here must equal tasks.filters.RULES (a test checks it).
WITH decided AS (
    SELECT
        r.*,
        d.* EXCLUDE (rid, duplicate_of),
        -- A repeated key duplicates the row that owns the key.
        CASE WHEN r.drop_duplicate_key THEN r.key ELSE d.duplicate_of END AS duplicate_of
    FROM rules AS r
    JOIN decisions AS d USING (rid)
)
SELECT
    * EXCLUDE (reasons_all),
    list_filter(reasons_all, lambda x: x IS NOT NULL) AS reasons,
    len(list_filter(reasons_all, lambda x: x IS NOT NULL)) = 0 AS keep
FROM (
    SELECT
        *,
        [
            CASE WHEN drop_duplicate_key THEN 'duplicate_key' END,
            CASE WHEN drop_download_failed THEN 'download_failed' END,
            CASE WHEN drop_image_missing THEN 'image_missing' END,
            CASE WHEN drop_shard_truncated THEN 'shard_truncated' END,
            CASE WHEN drop_image_empty THEN 'image_empty' END,
            CASE WHEN drop_image_undecodable THEN 'image_undecodable' END,
            CASE WHEN drop_caption_missing THEN 'caption_missing' END,
            CASE WHEN drop_caption_invalid_utf8 THEN 'caption_invalid_utf8' END,
            CASE WHEN drop_caption_boilerplate THEN 'caption_boilerplate' END,
            CASE WHEN drop_caption_too_short THEN 'caption_too_short' END,
            CASE WHEN drop_caption_too_long THEN 'caption_too_long' END,
            CASE WHEN drop_image_too_small THEN 'image_too_small' END,
            CASE WHEN drop_aspect_ratio THEN 'aspect_ratio' END,
            CASE WHEN drop_language THEN 'language' END,
            CASE WHEN drop_url_blocked THEN 'url_blocked' END,
            CASE WHEN drop_clip_score THEN 'clip_score' END,
            CASE WHEN drop_eval_contamination THEN 'eval_contamination' END,
            CASE WHEN drop_duplicate_sha256 THEN 'duplicate_sha256' END,
            CASE WHEN drop_duplicate_url THEN 'duplicate_url' END,
            CASE WHEN drop_duplicate_caption_image THEN 'duplicate_caption_image' END,
            CASE WHEN drop_near_duplicate THEN 'near_duplicate' END,
            CASE WHEN drop_semantic_duplicate THEN 'semantic_duplicate' END
        ] AS reasons_all
    FROM decided
)
ORDER BY rid
