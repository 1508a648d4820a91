-- Near-duplicate candidate pairs closest to the decision, the pairs worth a human look: the
-- verified pairs just above the threshold (dropped), the rejected ones just below it (kept),
-- and the most similar pairs the local-difference veto refused (kept: what differs sits in
-- one place, away from the edges). Table `near_pairs` comes from the near-duplicate step.
WITH named AS (
    SELECT
        a.key AS key_a,
        a.download_shard AS shard_a,
        b.key AS key_b,
        b.download_shard AS shard_b,
        p.similarity,
        p.verified,
        p.vetoed
    FROM near_pairs AS p
    JOIN rules AS a ON a.rid = p.rid_a
    JOIN rules AS b ON b.rid = p.rid_b
),
above AS (SELECT * FROM named WHERE verified ORDER BY similarity, key_a, key_b LIMIT $limit),
below AS (
    SELECT * FROM named WHERE NOT verified AND NOT vetoed
    ORDER BY similarity DESC, key_a, key_b LIMIT $limit
),
refused AS (
    SELECT * FROM named WHERE vetoed ORDER BY similarity DESC, key_a, key_b LIMIT $limit
)
SELECT * FROM above
UNION ALL
SELECT * FROM below
UNION ALL
SELECT * FROM refused
ORDER BY vetoed, similarity DESC, key_a, key_b
