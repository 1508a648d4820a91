-- Rows that take part in the next dedup step: decodable images not yet dropped as
-- duplicates (table `live`), with the preference that picks each group's survivor:
-- rows no earlier rule drops, then the most original pixels (dedup_candidates_ordered.sql).
CREATE OR REPLACE VIEW dedup_candidates AS
SELECT
    r.rid,
    r.key,
    r.sha256,
    r.url,
    r.caption_norm,
    r.phash,
    r.thumb,
    -- The share of the stored image's pixels across that are the web image's own: below 1
    -- where the download upscaled it (tasks.curate.near_dup.thumbnails_resolution).
    coalesce(least(1.0, greatest(r.original_width::DOUBLE / nullif(r.image_width, 0),
                                 r.original_height::DOUBLE / nullif(r.image_height, 0))),
             1.0) AS native_detail,
    NOT (r.drop_caption_missing OR r.drop_caption_invalid_utf8 OR r.drop_caption_too_short
        OR r.drop_caption_too_long OR r.drop_caption_boilerplate OR r.drop_image_too_small
        OR r.drop_aspect_ratio OR r.drop_language OR r.drop_url_blocked OR r.drop_clip_score
        OR c.drop_eval_contamination) AS quality_ok,
    coalesce(r.original_width, 0)::BIGINT * coalesce(r.original_height, 0)::BIGINT AS pixels
FROM rules AS r
JOIN live AS l USING (rid)
JOIN contamination AS c USING (rid)
WHERE l.alive
