"""The whole pipeline on the real MovieLens-100K files, checked against independent SQL."""

import duckdb
import pytest

from flows.pipeline import genair_full
from storage.sql import connect
from storage.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def store(ml100k_config):
    config = ml100k_config("ml100k", "[preprocess]\nk_core = 5\n")
    genair_full(config_path=str(config), until="cooccurrence")
    return Store(config.parent / "data")


def test_counts_after_5_core_filtering(store):
    # 943 users, 1,349 items and 99,287 interactions: the usual ML-100K 5-core statistics.
    assert store.table_info("items").rows == 1682
    assert store.table_info("interactions").rows == 100_000
    assert store.table_info("rejects").rows == 0
    assert store.table_info("user_index").rows == 943
    assert store.table_info("item_index").rows == 1349
    assert store.table_info("sequences").rows == 99_287


def test_kcore_matches_an_independent_sql_fixed_point(store):
    con = connect(store)
    con.execute("CREATE TABLE kept AS SELECT user_id, item_id FROM interactions")
    while True:
        removed = con.execute(
            """
            DELETE FROM kept WHERE user_id IN (
                SELECT user_id FROM kept GROUP BY user_id HAVING count(*) < 5)
              OR item_id IN (SELECT item_id FROM kept GROUP BY item_id HAVING count(*) < 5)
            """
        ).fetchall()[0][0]
        if removed == 0:
            break
    expected = con.execute("SELECT count(*) FROM kept").fetchall()[0][0]
    assert expected == store.table_info("sequences").rows


def test_leave_one_out_split(store):
    con = connect(store)
    sizes = dict(con.sql("SELECT split, count(*) FROM sequences GROUP BY split").fetchall())
    assert sizes == {"train": 99_287 - 2 * 943, "valid": 943, "test": 943}
    # Per user: exactly one valid and one test row, at the last two positions, in time order.
    bad = con.sql(
        """
        SELECT user_idx FROM sequences GROUP BY user_idx HAVING
            count(*) FILTER (split = 'test') != 1
         OR count(*) FILTER (split = 'valid') != 1
         OR max(position) FILTER (split = 'test') != max(position)
         OR max(position) FILTER (split = 'valid') != max(position) - 1
         OR max(timestamp) FILTER (split = 'train') > min(timestamp) FILTER (split = 'valid')
         OR max(timestamp) FILTER (split = 'valid') > min(timestamp) FILTER (split = 'test')
        """
    ).fetchall()
    assert bad == []


def test_cooccurrence_matches_a_sql_self_join(store):
    con = connect(store)
    expected = con.sql(
        """
        WITH train AS (SELECT DISTINCT user_idx, item_idx FROM sequences WHERE split = 'train')
        SELECT a.item_idx AS i, b.item_idx AS j, count(*) AS n
        FROM train a JOIN train b ON a.user_idx = b.user_idx AND a.item_idx < b.item_idx
        GROUP BY 1, 2
        """
    )
    diff = con.sql(
        """
        SELECT count(*) FROM expected e FULL JOIN cooccurrence c ON e.i = c.i AND e.j = c.j
        WHERE e.n IS DISTINCT FROM c.count
        """.replace("expected", "(" + expected.sql_query() + ")")
    ).fetchall()
    assert diff == [(0,)]
    top = con.sql('SELECT max("count"), max(s), min(s) FROM cooccurrence').fetchall()[0]
    assert top[1] == pytest.approx(1.0)
    assert top[2] == pytest.approx(
        0.6931472 / duckdb.sql(f"SELECT ln(1 + {top[0]})").fetchall()[0][0]
    )
