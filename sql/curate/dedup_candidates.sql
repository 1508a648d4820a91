-- The dedup steps' candidates: decodable images whose key is their own (table `live`).
-- Table `dedup_preference` ranks them once, in the order that picks each group's survivor:
-- rows no earlier rule drops, then the most original pixels, then the content (the image's
-- hash, its URL, its caption). Keys number the download's rows, and that order changes with
-- the web server's host and port, so a tie broken by key would pick a different survivor in
-- two runs over one web. A rank over all candidates orders every subset of them, so the rank
-- serves each later step over the rows still alive (view `dedup_candidates`).
CREATE OR REPLACE TABLE dedup_preference AS
SELECT
    rid,
    row_number() OVER (
        ORDER BY quality_ok DESC, pixels DESC, sha256, url, caption_norm, key, rid
    ) AS preference
FROM (
    SELECT
        r.rid, r.key, r.sha256, r.url, r.caption_norm,
        NOT (r.drop_caption_missing OR r.drop_caption_invalid_utf8 OR r.drop_caption_too_short
            OR r.drop_caption_too_long OR r.drop_caption_boilerplate OR r.drop_image_too_small
            OR r.drop_aspect_ratio OR r.drop_language OR r.drop_url_blocked OR r.drop_clip_score
            OR c.drop_eval_contamination) AS quality_ok,
        coalesce(r.original_width, 0)::BIGINT * coalesce(r.original_height, 0)::BIGINT AS pixels
    FROM rules AS r
    JOIN live AS l USING (rid)
    JOIN contamination AS c USING (rid)
);

-- The candidates still alive (a dedup step marks the rows it drops in `live`).
CREATE OR REPLACE VIEW dedup_candidates AS
SELECT
    r.rid,
    r.key,
    r.sha256,
    r.url,
    r.caption_norm,
    r.phash,
    r.thumb,
    r.native_detail,
    p.preference
FROM rules AS r
JOIN live AS l USING (rid)
JOIN dedup_preference AS p USING (rid)
WHERE l.alive;
