-- The misclassified test images the model was surest about, optionally of one true class.
SELECT tar, key, target, predicted, target_prob, predicted_prob
FROM predictions
WHERE target <> predicted AND (CAST($target AS INTEGER) IS NULL OR target = CAST($target AS INTEGER))
ORDER BY predicted_prob DESC, tar, key
LIMIT $limit
