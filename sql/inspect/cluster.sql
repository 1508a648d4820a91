-- One duplicate cluster: the surviving row first, then every row dropped as its duplicate,
-- the most distant (pHash Hamming bits) first.
WITH survivor AS (
    SELECT * FROM samples WHERE key = $key AND NOT drop_duplicate_key LIMIT 1
)
SELECT
    m.key, m.url, m.page_url, m.caption, m.download_shard, m.image_state, m.original_width,
    m.original_height, m.width, m.height, m.language, m.language_confidence,
    m.language_allowed_probability, m.clip_score,
    m.reasons, m.duplicate_of, m.eval_match, m.keep,
    bit_count(xor(('0x' || hex(m.phash))::UBIGINT, ('0x' || hex(s.phash))::UBIGINT))
        AS distance,
    m.key = s.key AS is_survivor
FROM samples AS m, survivor AS s
WHERE (m.key = s.key AND NOT m.drop_duplicate_key) OR m.duplicate_of = s.key
ORDER BY is_survivor DESC, distance DESC NULLS LAST, m.key
