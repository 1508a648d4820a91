-- Per-row quality rules over the per-shard feature table `features`.
-- One boolean column per rule, TRUE when the rule drops the row; never NULL.
-- Thresholds are named parameters bound from CurateConfig.
-- `features` carries rid, the row's position in the input (0..n-1, shard by shard), and
-- the features parsed per shard: url_host, page_host, caption_norm, caption_words.
-- Besides the flags it adds two measures: caption_chars and native_detail.
WITH read_order AS MATERIALIZED (
    -- Each row beside the row read before it. Where every (key, rid) is above the one before,
    -- the keys are in order and each key's rows lie together, lowest rid first: the repeats
    -- are then exactly the rows whose key equals the key before, found in one pass with no
    -- sort. The stage's table is in key order (img2dataset numbers keys by shard and position;
    -- each feature part is in key order, tasks.curate.features), so this is the usual case.
    -- Any other order (a NULL key included) is answered by the hash check below. MATERIALIZED:
    -- both answers must read the same order.
    SELECT
        rid,
        key = previous_key AS repeats_previous,
        key IS NULL OR coalesce(key < previous_key OR (key = previous_key AND rid < previous_rid),
                                FALSE) AS out_of_order
    FROM (
        SELECT rid, key, lag(key) OVER () AS previous_key, lag(rid) OVER () AS previous_rid
        FROM features
    )
),
keys_in_order AS (
    SELECT NOT coalesce(bool_or(out_of_order), FALSE) AS yes FROM read_order
),
repeated_key_hashes AS (
    -- Out of order only (otherwise it reads no row). Sorting 32-bit hashes of the keys is far
    -- cheaper than grouping the strings (or sorting 64-bit hashes). Only rows whose hash
    -- repeats are then compared by key: a collision (about n^2 / 2^33 of them) costs a
    -- comparison, never a wrong answer.
    SELECT DISTINCT key_hash FROM (
        SELECT key_hash, lag(key_hash) OVER (ORDER BY key_hash) AS previous_hash
        FROM (
            SELECT (hash(key) >> 32)::UINTEGER AS key_hash FROM features
            WHERE NOT (SELECT yes FROM keys_in_order)
        )
    )
    WHERE key_hash = previous_hash
),
duplicate_keys AS (
    -- The first row (by rid) owns a key; later rows with the same key are bad input.
    SELECT rid FROM read_order WHERE repeats_previous AND (SELECT yes FROM keys_in_order)
    UNION ALL
    SELECT rid FROM (
        SELECT rid, min(rid) OVER (PARTITION BY key) AS owner_rid
        FROM features
        WHERE (hash(key) >> 32)::UINTEGER IN (SELECT key_hash FROM repeated_key_hashes)
    )
    WHERE rid <> owner_rid
),
blocked_hosts AS (
    -- The blocklist is matched once per distinct host, not once per row: a host is blocked
    -- when it is a listed domain or a subdomain of one. (DISTINCT per column, then UNION, is
    -- cheaper than a UNION of the 2n host values.)
    SELECT DISTINCT hosts.host
    FROM (
        SELECT DISTINCT url_host AS host FROM features
        UNION
        SELECT DISTINCT page_host FROM features
    ) AS hosts
    JOIN (SELECT unnest($url_blocklist) AS domain) AS blocklist
        ON hosts.host = blocklist.domain OR ends_with(hosts.host, '.' || blocklist.domain)
),
measured AS (
    SELECT
        *,
        length(caption) AS caption_chars,
        -- CASE runs the costly trim() only where it can leave '': on captions that are
        -- empty or start with a space, below '!', or with a non-ASCII character (every other
        -- space trim() removes is one), at or above chr(128) in byte order.
        CASE
            WHEN caption IS NULL THEN TRUE
            WHEN caption < '!' OR caption >= chr(128) THEN trim(caption) = ''
            ELSE FALSE
        END AS caption_blank,
        -- The share of the stored image's pixels across that are the web image's own: below 1
        -- where the download upscaled it (tasks.curate.near_dup.thumbnails_resolution). Where
        -- one side was upscaled and the other not, the larger share is taken, so an unsure
        -- case is compared sharp (which merges less); unknown sizes count as the image's own.
        coalesce(least(1.0, greatest(original_width::DOUBLE / nullif(image_width, 0),
                                     original_height::DOUBLE / nullif(image_height, 0))),
                 1.0) AS native_detail
    FROM features
)
SELECT
    * EXCLUDE (caption_blank),
    rid IN (SELECT rid FROM duplicate_keys) AS drop_duplicate_key,
    coalesce(status <> 'success', TRUE) AS drop_download_failed,
    image_state = 'missing' AS drop_image_missing,
    image_state = 'shard_truncated' AS drop_shard_truncated,
    image_state = 'empty' AS drop_image_empty,
    image_state = 'undecodable' AS drop_image_undecodable,
    caption_blank AS drop_caption_missing,
    coalesce(caption_invalid_utf8, FALSE) AS drop_caption_invalid_utf8,
    coalesce(NOT caption_blank
        AND (caption_chars < $min_caption_chars OR caption_words < $min_caption_words), FALSE)
        AS drop_caption_too_short,
    -- The length as found: the crawl cuts captions to crawl.max_caption_chars.
    coalesce(greatest(caption_chars, caption_original_chars) > $max_caption_chars, FALSE)
        AS drop_caption_too_long,
    -- Only captions of few words can be boilerplate or a file name: CASE, unlike AND, skips
    -- the list lookup and the (costly) regex on every other row. Lists are searched with
    -- list_position: the config lists hold no NULL, so it answers as list_contains does, at
    -- half the cost (bench/bench_filters.py).
    CASE
        WHEN caption_words <= $boilerplate_caption_max_words
            AND list_position($boilerplate_captions, caption_norm) IS NOT NULL THEN TRUE
        WHEN caption_words <= $boilerplate_filename_max_words
            THEN coalesce(regexp_full_match(caption_norm, $boilerplate_filename_pattern), FALSE)
        ELSE FALSE
    END AS drop_caption_boilerplate,
    coalesce(least(original_width, original_height) < $min_image_side, FALSE)
        AS drop_image_too_small,
    coalesce(greatest(original_width, original_height)
        > $max_aspect_ratio * least(original_width, original_height), FALSE) AS drop_aspect_ratio,
    -- Dropped when the language identifiers' mean probability of the allowed languages is
    -- low (tasks/curate/language.py), lower still on short captions, where they read less;
    -- not judged below language_min_chars.
    coalesce(len($allowed_languages) > 0
        AND caption_chars >= $language_min_chars
        AND language_allowed_probability < CASE
            WHEN caption_words < $language_short_words THEN $min_allowed_language_probability_short
            ELSE $min_allowed_language_probability
        END, FALSE) AS drop_language,
    coalesce(url_host IN (SELECT host FROM blocked_hosts)
        OR page_host IN (SELECT host FROM blocked_hosts), FALSE) AS drop_url_blocked,
    -- LAION keeps clip_score >= a threshold; DataComp keeps the top fraction.
    coalesce(clip_score < $clip_score_min, FALSE)
        OR coalesce($clip_score_top_fraction IS NOT NULL AND clip_score < (
            SELECT quantile_disc(clip_score, 1 - coalesce($clip_score_top_fraction, 1.0))
            FROM features WHERE clip_score IS NOT NULL), FALSE) AS drop_clip_score
FROM measured
