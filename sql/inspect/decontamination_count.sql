SELECT count(*) AS total FROM contaminated_rows()
