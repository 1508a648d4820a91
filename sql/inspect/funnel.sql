-- Rows each rule drops, over curate/samples.parquet (view `samples`): `first` counts a row
-- under its first reason only (the counts sum to input - kept), `any` every row it flags.
SELECT
    reason,
    count(*) FILTER (WHERE position = 1) AS first,
    count(*) AS any
FROM (
    SELECT unnest(reasons) AS reason, generate_subscripts(reasons, 1) AS position
    FROM samples
)
GROUP BY reason
