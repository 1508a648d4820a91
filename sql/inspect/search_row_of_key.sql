-- The index row of a sample's image.
SELECT row FROM search_rows WHERE key = $key LIMIT 1
