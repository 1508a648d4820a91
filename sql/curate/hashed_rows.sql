-- Rows with a decoded image, in rid order: what decontamination compares with eval images,
-- with the share of their pixels that are the web image's own (as in dedup_candidates).
SELECT
    rid,
    thumb,
    coalesce(least(1.0, greatest(original_width::DOUBLE / nullif(image_width, 0),
                                 original_height::DOUBLE / nullif(image_height, 0))),
             1.0) AS native_detail
FROM rules
WHERE image_state = 'ok'
ORDER BY rid
