-- The download tar holding a sample's image.
SELECT download_shard, image_state FROM samples
WHERE key = $key AND image_state = 'ok' AND NOT drop_duplicate_key
LIMIT 1
