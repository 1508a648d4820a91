-- One page of the rows a rule dropped (counted under it: their first reason).
SELECT
    key, url, page_url, caption, download_shard, image_state, original_width, original_height,
    width, height, language, language_confidence, language_allowed_probability, clip_score,
    reasons, duplicate_of, eval_match
FROM dropped_rows($reason)
ORDER BY key, url
LIMIT $limit OFFSET $offset
