-- Rows with a decoded image, in rid order: what decontamination compares with eval images,
-- with the share of their pixels that are the web image's own (native_detail, rules.sql).
SELECT rid, thumb, native_detail
FROM rules
WHERE image_state = 'ok'
ORDER BY rid
