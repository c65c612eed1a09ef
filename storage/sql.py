"""DuckDB views over the Parquet tables: one view per table, named as the table."""

from __future__ import annotations

import duckdb

from storage.store import Store


def connect(store: Store) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view for every table written so far."""
    con = duckdb.connect(":memory:")
    for name in store.existing_tables():
        path = str(store.table_path(name)).replace("'", "''")
        con.execute(f"CREATE VIEW \"{name}\" AS SELECT * FROM read_parquet('{path}')")
    return con


def query(store: Store, sql: str) -> duckdb.DuckDBPyRelation:
    """Run `sql` against the views; the caller formats or fetches the result."""
    return connect(store).sql(sql)


def rejects_by_reason(store: Store) -> dict[str, int]:
    """{"<table>/<reason>": rows} over the rejects table, most frequent first."""
    rows = connect(store).sql(
        "SELECT concat(\"table\", '/', reason), count(*) AS n FROM rejects"
        " GROUP BY 1 ORDER BY n DESC, 1"
    )
    return {key: int(n) for key, n in rows.fetchall()}
