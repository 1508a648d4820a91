"""Every DuckDB query as a .sql file with named parameters, grouped by stage (package data)."""
