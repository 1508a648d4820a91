-- curate/samples.parquet: one row per input row, in input order, without working columns.
SELECT * EXCLUDE (rid, thumb) FROM curated ORDER BY rid
