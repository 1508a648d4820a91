-- One page of training rows that matched an evaluation image (`eval_match`: dataset/key).
SELECT
    key, url, page_url, caption, download_shard, image_state, original_width, original_height,
    width, height, language, language_confidence, language_allowed_probability, clip_score,
    reasons, duplicate_of, eval_match
FROM contaminated_rows()
ORDER BY eval_match, key
LIMIT $limit OFFSET $offset
