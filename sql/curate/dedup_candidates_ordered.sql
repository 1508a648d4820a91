-- The live dedup candidates in preference order: a group's survivor is its first row here.
SELECT rid, key, thumb, native_detail
FROM dedup_candidates
ORDER BY quality_ok DESC, pixels DESC, key, rid
