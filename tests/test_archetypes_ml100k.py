"""The archetype and pooling stages end to end: real ml-100k items, the real default model,
the real vLLM CPU engine, under Prefect."""

import numpy as np
import pytest

from flows.pipeline import genair_full
from genair_core.tables import to_matrix
from storage.sql import connect
from storage.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
N_ITEMS = 16


@pytest.fixture(scope="module")
def run(ml100k_config):
    extra = f'[llm]\nengine = "vllm"\nmax_items = {N_ITEMS}\nbatch_size = 8\nmax_new_tokens = 64\n'
    config = ml100k_config("ml100k-archetypes", extra)
    first = genair_full(config_path=str(config), until="pooling")
    return config, first, Store(config.parent / "data")


def test_every_item_gets_a_finite_archetype_and_vectors(run):
    _, summary, store = run
    assert summary["archetypes"]["generated"] == N_ITEMS
    assert summary["archetypes"]["failed"] == 0
    table = store.read_parts("archetypes")
    assert table.num_rows == N_ITEMS
    assert all(text.strip() for text in table["archetype"].to_pylist())
    for column in ("input_emb", "gen_emb"):
        vectors = to_matrix(table[column])
        assert vectors.shape == (N_ITEMS, 576)  # SmolLM2-135M's hidden size
        assert np.isfinite(vectors).all()
        assert np.linalg.matrix_rank(vectors) > N_ITEMS // 2  # items differ
    assert set(table["model_id"].to_pylist()) == {table["model_id"][0].as_py()}
    assert table["model_id"][0].as_py().startswith("SmolLM2-135M-Instruct@")
    assert set(table["finish_reason"].to_pylist()) <= {"stop", "length"}


def test_prompt_is_the_papers_wording_for_movielens(run):
    _, _, store = run
    prompt = connect(store).sql("SELECT prompt FROM archetypes WHERE item_id = '1'").fetchall()
    assert prompt == [
        (
            "Based on the following attributes, identify the types of users this item would "
            "appeal to: \n title is Toy Story; categories is Animation, Children's, Comedy; "
            "release year is 1995\nWhich potential users align best with this movie?",
        )
    ]


def test_pooled_vectors_for_every_item(run):
    _, summary, store = run
    embeddings = store.read_table("item_embeddings")
    assert embeddings.num_rows == N_ITEMS
    # 16 items cap each PCA at 15 components.
    assert embeddings.schema.field("vector").type.list_size == 30
    assert np.isfinite(to_matrix(embeddings["vector"])).all()
    assert summary["pooling"]["dims"] == 30


def test_rerun_skips_and_a_lost_batch_is_regenerated_identically(run):
    config, _, store = run
    again = genair_full(config_path=str(config), until="pooling")
    assert again["archetypes"]["generated"] == 0
    assert again["archetypes"]["up_to_date"] == N_ITEMS

    before = dict(connect(store).sql("SELECT item_id, archetype FROM archetypes").fetchall())
    store.part_paths("archetypes")[0].unlink()  # a batch lost, e.g. a crash before its write
    third = genair_full(config_path=str(config), until="pooling")
    assert third["archetypes"]["generated"] == 8
    after = dict(connect(store).sql("SELECT item_id, archetype FROM archetypes").fetchall())
    assert after == before  # same item, model, prompt version and seed: same archetype
