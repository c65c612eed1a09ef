"""`genair sql --csv` with columns CSV has no type for: lists, structs and maps as JSON text."""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa

from flows.cli import main
from storage.store import Store


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_list_struct_and_map_columns_are_json_text(tmp_path, capsys):
    config = tmp_path / "genair.toml"
    config.write_text('[storage]\nroot = "data"\n')
    query = (
        "SELECT 1 AS n, ['a', 'b'] AS items, {'k': 2, 'when': DATE '2026-11-30'} AS info, "
        "MAP {'x': 1.5} AS weights, NULL::INT[] AS missing, [[1, 2], []] AS nested"
    )
    assert main(["--config", str(config), "sql", query, "--csv"]) == 0
    (row,) = csv_rows(capsys.readouterr().out)
    assert row["n"] == "1"
    assert json.loads(row["items"]) == ["a", "b"]
    assert json.loads(row["info"]) == {"k": 2, "when": "2026-11-30"}
    assert json.loads(row["weights"]) == [["x", 1.5]]
    assert row["missing"] == ""
    assert json.loads(row["nested"]) == [[1, 2], []]


def test_a_table_with_a_list_column_exports(tmp_path, capsys):
    """The vectors of item_embeddings (a fixed-size list per row), as a catalog's lists are."""
    config = tmp_path / "genair.toml"
    config.write_text('[storage]\nroot = "data"\n')
    vectors = pa.array([[0.5, 1.0], [2.0, -1.0]], pa.list_(pa.float32(), 2))
    same = ["x", "x"]
    table = pa.table(
        {
            "item_id": ["a", "b"],
            **dict.fromkeys(
                ["content_hash", "model_id", "prompt_version", "settings_id", "basis_id"], same
            ),
            "vector": vectors,
        }
    )
    Store(tmp_path / "data").write_table("item_embeddings", table)
    sql = "SELECT item_id, vector FROM item_embeddings ORDER BY item_id"
    assert main(["--config", str(config), "sql", sql, "--csv"]) == 0
    rows = csv_rows(capsys.readouterr().out)
    assert [(r["item_id"], json.loads(r["vector"])) for r in rows] == [
        ("a", [0.5, 1.0]),
        ("b", [2.0, -1.0]),
    ]
