-- Dedup candidates before the first step: every decodable image whose key is its own.
CREATE OR REPLACE TABLE live AS
SELECT rid, TRUE AS alive
FROM rules
WHERE image_state = 'ok' AND NOT drop_duplicate_key
