-- One exact-duplicate rule ($rule: 'sha256' | 'url' | 'caption_image') over the live
-- candidates: each group keeps its preferred row; every other member names that row's key.
WITH grouped AS (
    SELECT
        rid,
        key,
        preference,
        CASE $rule
            WHEN 'sha256' THEN sha256
            WHEN 'url' THEN url
            WHEN 'caption_image' THEN
                CASE WHEN caption_norm <> '' THEN caption_norm || chr(0) || hex(phash) END
        END AS group_key
    FROM dedup_candidates
),
ranked AS (
    SELECT
        rid,
        first_value(rid) OVER w AS survivor_rid,
        first_value(key) OVER w AS survivor_key
    FROM grouped
    WHERE group_key IS NOT NULL
    -- The preference of dedup_candidates.sql (which says why the content comes first).
    WINDOW w AS (PARTITION BY group_key ORDER BY preference)
)
SELECT rid, survivor_key AS duplicate_of
FROM ranked
WHERE rid <> survivor_rid
ORDER BY rid
