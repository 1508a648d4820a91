-- Index rows -> sample keys of the image-embedding index (eval/search/images.parquet).
SELECT row, key FROM search_rows WHERE row IN (SELECT unnest(CAST($rows AS BIGINT[])))
