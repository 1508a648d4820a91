-- How many rows each rule drops: `first` counts a row under its first reason only (so the
-- counts sum to input - kept), `any` counts every row the rule flags.
SELECT
    reason,
    count(*) FILTER (WHERE position = 1) AS first,
    count(*) AS any
FROM (
    SELECT unnest(reasons) AS reason, generate_subscripts(reasons, 1) AS position
    FROM curated
)
GROUP BY reason
