"""DuckDB views over the Parquet tables: one view per table, named as the table, and `runs`
(storage.runs), which every table's `run_id` column joins:

    SELECT r.flow, r.started_at, count(*) FROM items i JOIN runs r USING (run_id) GROUP BY ALL

A Delta table (storage.delta) is a view of its current version only, through delta-rs's Arrow
dataset of that version: a glob over its folder would also read the files of the older versions
it keeps.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import BinaryIO

import duckdb
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq

from storage import delta
from storage.schemas import archetypes_schema
from storage.store import Store

RUN_DATASETS = ("metrics", "eval_ranks", "training_log")


def connect(store: Store) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view for every table written so far."""
    con = duckdb.connect(":memory:")
    for name in store.existing_tables():
        path = _quote(str(store.table_path(name)))
        con.execute(f"CREATE VIEW \"{name}\" AS SELECT * FROM read_parquet('{path}')")
    for name in store.existing_datasets():
        parts = _quote(str(store.dataset_dir(name) / "*" / "part-*.parquet"))
        if name in RUN_DATASETS:  # one partition per recommender run: its name is a column
            con.execute(
                f'CREATE VIEW "{name}" AS SELECT * EXCLUDE (filename), '
                "regexp_extract(filename, '([^/]+)/[^/]+$', 1) AS run "
                f"FROM read_parquet('{parts}', union_by_name = true, filename = true)"
            )
            continue
        con.execute(
            f"CREATE VIEW \"{name}\" AS SELECT * FROM read_parquet('{parts}', union_by_name = true)"
        )
    if any(store.runs_dir().glob("*.parquet")):
        runs = _quote(str(store.runs_dir() / "*.parquet"))
        con.execute(
            f"CREATE VIEW runs AS SELECT * FROM read_parquet('{runs}', union_by_name = true)"
        )
    for name in delta.existing_tables(store):
        con.register(name, delta.arrow_dataset(store, name))
    if "archetypes" in store.existing_datasets() and store.exists("items"):
        # Every part ever written stays in `archetypes` (other models, prompts, old content);
        # this view keeps the newest archetype of each item's current content per model,
        # prompt version and settings.
        con.execute(
            """
            CREATE VIEW current_archetypes AS
            SELECT a.* FROM archetypes a JOIN items i USING (item_id, content_hash)
            QUALIFY row_number() OVER (
                PARTITION BY a.item_id, a.model_id, a.prompt_version, a.settings_id
                ORDER BY a.created_at DESC) = 1
            """
        )
    return con


class QueryError(ValueError):
    """A query that DuckDB refused; the message is DuckDB's."""


def query(store: Store, sql: str, **params: object) -> duckdb.DuckDBPyRelation | None:
    """Run `sql` against the views, with `$name` placeholders bound to `params`; None for a
    statement without a result."""
    try:
        return connect(store).sql(sql, params=params or None)
    except duckdb.Error as err:
        raise QueryError(str(err)) from None


def write_csv(relation: duckdb.DuckDBPyRelation, out: BinaryIO) -> None:
    """The result as CSV, list, struct and map columns as JSON text (`[1, 2]`, `{"a": 1}`),
    which CSV has no other way to hold."""
    table = relation.to_arrow_table()
    columns = [_json_text(column) if _nested(column.type) else column for column in table.columns]
    pyarrow.csv.write_csv(pa.table(columns, names=table.column_names), out)


def _nested(kind: pa.DataType) -> bool:
    return pa.types.is_nested(kind)


def _json_text(column: pa.ChunkedArray) -> pa.Array:
    """Each value as JSON (None stays empty); a map is a list of [key, value] pairs, a decimal a
    number, another value JSON has no type for (a date, bytes) its str()."""
    return pa.array(
        [
            None if value is None else json.dumps(value, default=_json_value, ensure_ascii=False)
            for value in column.to_pylist()
        ],
        type=pa.string(),
    )


def _json_value(value: object) -> object:
    return float(value) if isinstance(value, Decimal) else str(value)


def current_archetypes(
    store: Store, model_id: str, prompt_version: str, settings_id: str
) -> pa.Table | None:
    """The archetype of every catalog item as it is now (same content_hash), made by this model,
    prompt and settings; the newest if a batch was ever written twice. None if there is none."""
    paths = store.part_paths("archetypes", model_id)
    if not paths or not store.exists("items"):
        return None
    con = duckdb.connect(":memory:")
    parts = [str(p) for p in paths]
    table = con.sql(
        """
        SELECT a.* EXCLUDE (prompt, archetype) FROM read_parquet($parts) a
        JOIN read_parquet($items) i USING (item_id, content_hash)
        WHERE a.prompt_version = $prompt_version AND a.settings_id = $settings_id
        QUALIFY row_number() OVER (PARTITION BY a.item_id ORDER BY a.created_at DESC) = 1
        ORDER BY a.item_id
        """,
        params={
            "parts": parts,
            "items": str(store.table_path("items")),
            "prompt_version": prompt_version,
            "settings_id": settings_id,
        },
    ).to_arrow_table()
    # DuckDB hands fixed-size lists back as plain lists: restore the declared types.
    dim = pq.read_schema(paths[0]).field("input_emb").type.list_size
    declared = archetypes_schema(dim)
    return table.cast(pa.schema([declared.field(name) for name in table.column_names]))


def _quote(text: str) -> str:
    return text.replace("'", "''")


def rejects_by_reason(store: Store) -> dict[str, int]:
    """{"<table>/<reason>": rows} over the rejects table, most frequent first."""
    rows = connect(store).sql(
        "SELECT concat(\"table\", '/', reason), count(*) AS n FROM rejects"
        " GROUP BY 1 ORDER BY n DESC, 1"
    )
    return {key: int(n) for key, n in rows.fetchall()}


def full_ranking_test_metrics(store: Store) -> list[dict]:
    """The `metrics` rows a results table shows (test split, full ranking, all users) of every
    finished recommender run and the popularity baseline; none before the first has finished."""
    if "metrics" not in store.existing_datasets():
        return []
    relation = query(
        store,
        'SELECT backbone, variant, seed, loss, protocol, split, "group", metric, value '
        "FROM metrics WHERE split = 'test' AND protocol = 'full' AND \"group\" = 'all'",
    )
    return relation.to_arrow_table().to_pylist() if relation is not None else []


def known_item_ids(store: Store, item_ids: list[str]) -> set[str] | None:
    """The ids of `item_ids` that the `items` table holds; None when there is no `items` table
    yet."""
    if not store.exists("items"):
        return None
    known = query(
        store, "SELECT item_id FROM items WHERE list_contains($ids, item_id)", ids=item_ids
    )
    return {row[0] for row in known.fetchall()} if known is not None else set()
