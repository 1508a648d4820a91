-- Near-duplicate candidate pairs closest to the threshold on either side: the verified pairs
-- just above it (dropped) and the rejected ones just below it (kept), the pairs worth a
-- human look. Table `near_pairs` comes from the near-duplicate step.
WITH named AS (
    SELECT
        a.key AS key_a,
        a.download_shard AS shard_a,
        b.key AS key_b,
        b.download_shard AS shard_b,
        p.similarity,
        p.verified
    FROM near_pairs AS p
    JOIN rules AS a ON a.rid = p.rid_a
    JOIN rules AS b ON b.rid = p.rid_b
),
above AS (SELECT * FROM named WHERE verified ORDER BY similarity, key_a, key_b LIMIT $limit),
below AS (
    SELECT * FROM named WHERE NOT verified ORDER BY similarity DESC, key_a, key_b LIMIT $limit
)
SELECT * FROM above
UNION ALL
SELECT * FROM below
ORDER BY similarity DESC, key_a, key_b
