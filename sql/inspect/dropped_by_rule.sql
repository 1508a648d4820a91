-- One page of the rows a rule dropped (counted under it: their first reason), with the
-- total as a window count.
SELECT
    key, url, page_url, caption, download_shard, image_state, original_width, original_height,
    width, height, language, language_confidence, clip_score, reasons, duplicate_of,
    eval_match, count(*) OVER () AS total
FROM samples
WHERE reasons[1] = $reason
ORDER BY key, url
LIMIT $limit OFFSET $offset
