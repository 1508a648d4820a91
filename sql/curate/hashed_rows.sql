-- Rows with a decoded image, in rid order: what decontamination compares with eval images.
SELECT rid, thumb FROM rules WHERE image_state = 'ok' ORDER BY rid
