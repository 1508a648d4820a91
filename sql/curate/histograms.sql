-- Caption lengths and image sizes, input and kept, for the report's histograms.
SELECT
    caption_chars,
    least(original_width, original_height) AS min_side,
    greatest(original_width, original_height) AS max_side,
    keep
FROM curated
WHERE status = 'success'
