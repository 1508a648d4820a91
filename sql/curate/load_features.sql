-- The per-shard feature parts, as one table.
CREATE OR REPLACE TABLE features AS
SELECT * FROM read_parquet($files, union_by_name = true)
