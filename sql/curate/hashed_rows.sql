-- Rows with a decoded image, in rid order: what decontamination compares with eval images.
SELECT rid, thumb, least(image_width, image_height) AS min_side FROM rules WHERE image_state = 'ok' ORDER BY rid
