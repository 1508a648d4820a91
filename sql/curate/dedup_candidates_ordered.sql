-- The live dedup candidates in preference order (dedup_candidates.sql): a group's survivor is
-- its first row here.
SELECT rid, key, thumb, native_detail
FROM dedup_candidates
ORDER BY preference
