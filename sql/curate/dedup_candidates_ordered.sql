-- The live dedup candidates in preference order: a group's survivor is its first row here.
-- Rows no earlier rule drops, then the most original pixels, then the content (the image's
-- hash, its URL, its caption): keys number the download's rows, and that order changes with
-- the web server's host and port, so a tie broken by key would pick a different survivor in
-- two runs over one web. exact_duplicates.sql orders its groups the same way.
SELECT rid, key, thumb, native_detail
FROM dedup_candidates
ORDER BY quality_ok DESC, pixels DESC, sha256, url, caption_norm, key, rid
