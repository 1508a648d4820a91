-- The misclassified test images the model was surest about (the widest margin between the
-- predicted class and the true one), optionally of one true class.
SELECT
    tar, key, target, predicted, target_similarity, predicted_similarity,
    predicted_similarity - target_similarity AS margin
FROM predictions
WHERE target <> predicted AND (CAST($target AS INTEGER) IS NULL OR target = CAST($target AS INTEGER))
ORDER BY margin DESC, tar, key
LIMIT $limit
