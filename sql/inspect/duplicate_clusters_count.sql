SELECT count(*) AS total FROM duplicate_clusters()
