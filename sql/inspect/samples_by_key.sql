-- The rows of the given keys (a search result, one sample), first row of a repeated key only.
SELECT
    key, url, page_url, caption, download_shard, image_state, original_width, original_height,
    width, height, language, language_confidence, language_allowed_probability, clip_score,
    reasons, duplicate_of, eval_match, keep
FROM samples
WHERE key IN (SELECT unnest(CAST($keys AS VARCHAR[]))) AND NOT drop_duplicate_key
