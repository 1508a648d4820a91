-- curate/samples.parquet: one row per input row, in input order, without working columns.
SELECT * EXCLUDE (rid) FROM curated ORDER BY rid
