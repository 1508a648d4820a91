-- Languages of the kept rows, most frequent first (the filter's choices).
SELECT language, count(*) AS n FROM samples WHERE keep AND language IS NOT NULL
GROUP BY language ORDER BY n DESC, language
