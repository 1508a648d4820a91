-- Duplicate clusters: the row every dropped duplicate points to (`duplicate_of`) and its
-- members, with the largest pHash Hamming distance (0-64 bits) between a dropped member and
-- it; the most distant first, the borderline ones a human should look at.
WITH members AS (
    SELECT
        d.duplicate_of AS kept_key,
        -- the dedup rule (a row may also be counted under an earlier rule)
        coalesce(list_filter(d.reasons, lambda r: contains(r, 'duplicate'))[1], d.reasons[1])
            AS reason,
        bit_count(xor(('0x' || hex(d.phash))::UBIGINT, ('0x' || hex(s.phash))::UBIGINT))
            AS distance
    FROM samples AS d
    JOIN samples AS s ON s.key = d.duplicate_of AND NOT s.drop_duplicate_key
    WHERE d.duplicate_of IS NOT NULL
)
SELECT
    kept_key,
    count(*) AS dropped,
    max(distance) AS max_distance,
    list(DISTINCT reason ORDER BY reason) AS reasons,
    count(*) OVER () AS total
FROM members
GROUP BY kept_key
ORDER BY max_distance DESC NULLS LAST, kept_key
LIMIT $limit OFFSET $offset
