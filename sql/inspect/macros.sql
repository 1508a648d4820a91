-- Table macros over the view `samples` (curate/samples.parquet): each paged view's rows, so
-- its page query and its count query share one definition. Created once per connection.

-- Curate's own queries over its output read it as `curated` (the funnel: curate/funnel).
CREATE OR REPLACE TEMP VIEW curated AS FROM samples;
CREATE OR REPLACE TEMP MACRO dropped_rows(rule) AS TABLE
    SELECT * FROM samples WHERE reasons[1] = rule;

CREATE OR REPLACE TEMP MACRO kept_rows(caption_contains, language_is, min_side, max_side) AS TABLE
    SELECT * FROM samples
    WHERE keep
        AND (CAST(caption_contains AS VARCHAR) IS NULL
            OR contains(lower(caption), lower(CAST(caption_contains AS VARCHAR))))
        AND (CAST(language_is AS VARCHAR) IS NULL OR language = CAST(language_is AS VARCHAR))
        AND (CAST(min_side AS BIGINT) IS NULL
            OR least(original_width, original_height) >= CAST(min_side AS BIGINT))
        AND (CAST(max_side AS BIGINT) IS NULL
            OR greatest(original_width, original_height) <= CAST(max_side AS BIGINT));

-- Duplicate clusters: the row every dropped duplicate points to (`duplicate_of`) and its
-- dropped members, with the largest pHash Hamming distance (0-64 bits) between a member and
-- it, and the dedup rules that dropped them (a row may be counted under an earlier rule).
CREATE OR REPLACE TEMP MACRO duplicate_clusters() AS TABLE
    SELECT
        d.duplicate_of AS kept_key,
        count(*) AS dropped,
        max(bit_count(xor(('0x' || hex(d.phash))::UBIGINT, ('0x' || hex(s.phash))::UBIGINT)))
            AS max_distance,
        list(DISTINCT coalesce(list_filter(d.reasons, lambda r: contains(r, 'duplicate'))[1],
                               d.reasons[1]) ORDER BY 1) AS reasons
    FROM samples AS d
    JOIN samples AS s ON s.key = d.duplicate_of AND NOT s.drop_duplicate_key
    WHERE d.duplicate_of IS NOT NULL
    GROUP BY d.duplicate_of;

CREATE OR REPLACE TEMP MACRO contaminated_rows() AS TABLE
    SELECT * FROM samples WHERE eval_match IS NOT NULL;
