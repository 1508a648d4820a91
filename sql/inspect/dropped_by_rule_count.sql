SELECT count(*) AS total FROM dropped_rows($reason)
