SELECT count(*) AS total FROM kept_rows($caption_contains, $language, $min_side, $max_side)
