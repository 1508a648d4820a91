-- One page of kept rows, filtered by conditions that are all parameters (NULL: no
-- condition), with the total as a window count.
SELECT
    key, url, page_url, caption, download_shard, image_state, original_width, original_height,
    width, height, language, language_confidence, clip_score, reasons, duplicate_of,
    eval_match, count(*) OVER () AS total
FROM samples
WHERE keep
    AND (CAST($caption_contains AS VARCHAR) IS NULL
        OR contains(lower(caption), lower(CAST($caption_contains AS VARCHAR))))
    AND (CAST($language AS VARCHAR) IS NULL OR language = CAST($language AS VARCHAR))
    AND (CAST($min_side AS BIGINT) IS NULL
        OR least(original_width, original_height) >= CAST($min_side AS BIGINT))
    AND (CAST($max_side AS BIGINT) IS NULL
        OR greatest(original_width, original_height) <= CAST($max_side AS BIGINT))
ORDER BY key
LIMIT $limit OFFSET $offset
