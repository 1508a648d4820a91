-- Per-row quality rules over the per-shard feature table `features`.
-- One boolean column per rule, TRUE when the rule drops the row; never NULL.
-- Thresholds are named parameters bound from CurateConfig.
-- `features` carries rid, the row's position in the input (0..n-1, shard by shard), and
-- the features parsed per shard: url_host, page_host, caption_norm, caption_words.
WITH key_owners AS (
    -- The first row (by rid) owns a key; later rows with the same key are bad input.
    SELECT key, min(rid) AS owner_rid FROM features GROUP BY key
),
hosts AS (
    SELECT
        *,
        length(caption) AS caption_chars
    FROM features
    LEFT JOIN key_owners USING (key)
)
SELECT
    * EXCLUDE (owner_rid),
    coalesce(rid <> owner_rid, FALSE) AS drop_duplicate_key,
    status IS DISTINCT FROM 'success' AS drop_download_failed,
    image_state = 'missing' AS drop_image_missing,
    image_state = 'shard_truncated' AS drop_shard_truncated,
    image_state = 'empty' AS drop_image_empty,
    image_state = 'undecodable' AS drop_image_undecodable,
    caption IS NULL OR trim(caption) = '' AS drop_caption_missing,
    coalesce(caption_invalid_utf8, FALSE) AS drop_caption_invalid_utf8,
    coalesce(trim(caption) <> ''
        AND (caption_chars < $min_caption_chars OR caption_words < $min_caption_words), FALSE)
        AS drop_caption_too_short,
    coalesce(caption_chars > $max_caption_chars, FALSE) AS drop_caption_too_long,
    -- The regex runs only on captions short enough to be a file name (it is the costly part).
    coalesce(list_contains($boilerplate_captions, caption_norm)
        OR (caption_words <= $boilerplate_filename_max_words
            AND regexp_full_match(caption_norm, $boilerplate_filename_pattern)), FALSE)
        AS drop_caption_boilerplate,
    coalesce(least(original_width, original_height) < $min_image_side, FALSE)
        AS drop_image_too_small,
    coalesce(greatest(original_width, original_height)
        > $max_aspect_ratio * least(original_width, original_height), FALSE) AS drop_aspect_ratio,
    -- Language ID abstains on short captions and low confidence, where it is mostly noise.
    coalesce(len($allowed_languages) > 0
        AND NOT list_contains($allowed_languages, language)
        AND language_confidence >= $min_language_confidence
        AND caption_chars >= $language_min_chars, FALSE) AS drop_language,
    coalesce(len(list_filter($url_blocklist, lambda d: url_host = d OR ends_with(url_host, '.' || d)
        OR page_host = d OR ends_with(page_host, '.' || d))) > 0, FALSE) AS drop_url_blocked,
    -- LAION keeps clip_score >= a threshold; DataComp keeps the top fraction.
    coalesce(clip_score < $clip_score_min, FALSE)
        OR coalesce($clip_score_top_fraction IS NOT NULL AND clip_score < (
            SELECT quantile_disc(clip_score, 1 - coalesce($clip_score_top_fraction, 1.0))
            FROM features WHERE clip_score IS NOT NULL), FALSE) AS drop_clip_score
FROM hosts
