"""Load the DuckDB queries in ``sql/`` by name (``curate/rules``), so no query text lives in
Python code. ``sql/`` is package data, so a wheel install finds it too."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

import duckdb

SQL_DIR: Traversable = files("sql")
_PARAMETER = re.compile(r"\$([A-Za-z_]\w*)")


@cache
def load_sql(name: str) -> str:
    """The text of ``sql/<name>.sql``; raises FileNotFoundError naming the missing file."""
    path = SQL_DIR.joinpath(*f"{name}.sql".split("/"))
    if not path.is_file():
        raise FileNotFoundError(f"no query named {name!r}: {path} does not exist")
    return path.read_text(encoding="utf-8")


def bind(name: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(query text, the parameters it names): DuckDB rejects unused named parameters, so one
    config-wide parameter dict can serve every query."""
    text = load_sql(name)
    used = set(_PARAMETER.findall(text))
    missing = used - params.keys()
    if missing:
        raise KeyError(f"sql/{name}.sql needs parameters {sorted(missing)}")
    return text, {k: v for k, v in params.items() if k in used}


def connect(
    database: str, memory_limit: str | None = None, temp_directory: str | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection to ``database`` (a file path, or ":memory:") within
    ``memory_limit`` ("2GB"; None: DuckDB's default), spilling what does not fit to
    ``temp_directory`` (None: DuckDB's default, ``<database>.tmp``; "" disables spilling)."""
    config = {"memory_limit": memory_limit, "temp_directory": temp_directory}
    return duckdb.connect(database, config={k: v for k, v in config.items() if v is not None})


def run_sql(
    con: duckdb.DuckDBPyConnection, name: str, params: dict[str, Any] | None = None
) -> duckdb.DuckDBPyConnection:
    """Execute ``sql/<name>.sql`` with the named parameters it uses from ``params``."""
    text, bound = bind(name, params or {})
    return con.execute(text, bound)
