-- One page of kept rows, filtered by conditions that are all bound parameters (NULL: no
-- condition).
SELECT
    key, url, page_url, caption, download_shard, image_state, original_width, original_height,
    width, height, language, language_confidence, language_allowed_probability, clip_score,
    reasons, duplicate_of, eval_match
FROM kept_rows($caption_contains, $language, $min_side, $max_side)
ORDER BY key
LIMIT $limit OFFSET $offset
