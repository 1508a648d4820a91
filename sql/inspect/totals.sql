-- Input rows and kept rows.
SELECT count(*) AS input, count(*) FILTER (WHERE keep) AS kept FROM samples
