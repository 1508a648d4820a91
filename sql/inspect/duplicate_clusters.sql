-- One page of duplicate clusters, the most distant first: the borderline ones a human should
-- look at.
SELECT * FROM duplicate_clusters()
ORDER BY max_distance DESC NULLS LAST, kept_key
LIMIT $limit OFFSET $offset
