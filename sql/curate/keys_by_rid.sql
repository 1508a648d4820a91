-- Every row's key, indexed by rid (0..n-1).
SELECT key FROM rules ORDER BY rid
