-- A few dropped duplicates with the row each duplicates, to show in the report.
SELECT
    d.key AS dropped_key,
    d.download_shard AS dropped_shard,
    d.reasons AS reasons,
    s.key AS kept_key,
    s.download_shard AS kept_shard
FROM curated AS d
JOIN curated AS s ON s.key = d.duplicate_of AND NOT s.drop_duplicate_key
WHERE d.duplicate_of IS NOT NULL AND d.image_state = 'ok' AND s.image_state = 'ok'
ORDER BY d.rid
LIMIT $limit
