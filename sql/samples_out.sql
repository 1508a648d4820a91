-- curate/samples.parquet: one row per input row, in input order, without working columns.
SELECT * EXCLUDE (rid, url_host, page_host) FROM curated ORDER BY rid
