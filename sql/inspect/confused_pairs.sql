-- The most frequent (true, predicted) confusions of one classification dataset.
SELECT target, predicted, count(*) AS n
FROM predictions
WHERE target <> predicted
GROUP BY target, predicted
ORDER BY n DESC, target, predicted
LIMIT $limit
