"""The archetype and pooling stages under Prefect, with a scripted engine standing in for the LLM.

The engine's behaviour is driven by words in an item's title: POISON crashes the engine, EMPTY
gives an empty completion, NANVEC gives a NaN vector. The flow's engine pool makes it through the
`engine_factory` the flow is given. The real engines are tested in test_engines.py and end to
end in test_archetypes_ml100k.py.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from prefect import flow
from small_dataset import write_small_dataset

from flows.pipeline import genair_pipeline
from genair_core.engines import EnginePool
from genair_core.engines.base import Completion
from storage.sql import connect
from storage.store import Store
from tasks.archetypes import generate_archetype_batch, plan_archetypes
from tasks.settings import load_settings

pytestmark = pytest.mark.usefixtures("prefect_harness")
EOS = 0
DIM = 8


class ScriptedEngine:
    name = "vllm"
    hidden_size = DIM
    eos_token_ids = frozenset({EOS})
    generate_calls = 0
    fail_next_generate = 0  # how many upcoming generate calls raise a transient error

    def __init__(self, *args, **kwargs):
        self.closed = False

    @staticmethod
    def token_ids(text):
        return [1 + sum(map(ord, word)) % 997 for word in text.split()]

    def render(self, prompt):
        return f"<user> {prompt} <assistant>"

    def count_tokens(self, text):
        return len(self.token_ids(text))

    def generate(self, prompts):
        ScriptedEngine.generate_calls += 1
        if ScriptedEngine.fail_next_generate:
            ScriptedEngine.fail_next_generate -= 1
            raise ConnectionError("engine hiccup")
        if any("POISON" in p for p in prompts):
            raise RuntimeError("engine crashed on a poisoned item")
        out = []
        for p in prompts:
            title = p.split("title is ")[1].split(";")[0].split("\n")[0]
            text = "" if "EMPTY" in p else f"people who like {title}"
            ids = (*self.token_ids(text), EOS, 5, 5)  # junk after EOS
            out.append(Completion(text, tuple(self.token_ids(p)), ids, "stop"))
        return out

    def embed(self, prompt_ids, completion_ids):
        vectors = []
        for p, c in zip(prompt_ids, completion_ids, strict=True):
            rng = np.random.default_rng(sum(p) + 7 * sum(c[: c.index(EOS) + 1]))
            input_emb, gen_emb = rng.normal(size=(2, DIM)).astype(np.float32)
            vectors.append((input_emb, gen_emb))
        return vectors

    def close(self):
        self.closed = True


class NanEngine(ScriptedEngine):
    def generate(self, prompts):
        out = super().generate(prompts)
        self.poisoned = {
            c.prompt_token_ids for p, c in zip(prompts, out, strict=True) if "NANVEC" in p
        }
        return out

    def embed(self, prompt_ids, completion_ids):
        vectors = super().embed(prompt_ids, completion_ids)
        return [
            (np.full(DIM, np.nan, np.float32), g) if tuple(p) in self.poisoned else (i, g)
            for (i, g), p in zip(vectors, prompt_ids, strict=True)
        ]


@pytest.fixture
def config(tmp_path, monkeypatch):
    model = tmp_path / "scripted-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    monkeypatch.setattr(ScriptedEngine, "generate_calls", 0)
    monkeypatch.setattr(ScriptedEngine, "fail_next_generate", 0)
    path = write_small_dataset(tmp_path)
    llm = f'[llm]\nmodel = "{model}"\nbatch_size = 2\nbatch_retries = 1\n'
    path.write_text(path.read_text() + llm)
    return path


def run(config, **kwargs):
    kwargs.setdefault("until", "pooling")
    kwargs.setdefault("engine_factory", ScriptedEngine)
    return genair_pipeline(config_path=str(config), **kwargs)


def set_title(config, item_id, title):
    catalog = config.parent / "catalog.csv"
    lines = catalog.read_text().splitlines()
    lines = [f"{item_id},{title},x" if line.startswith(f"{item_id},") else line for line in lines]
    catalog.write_text("\n".join(lines) + "\n")


def archetypes(config):
    return (
        connect(Store(config.parent / "data"))
        .sql("SELECT item_id, archetype, truncated FROM archetypes ORDER BY item_id, created_at")
        .fetchall()
    )


def test_every_item_gets_an_archetype_and_a_pooled_vector(config):
    summary = run(config)
    assert summary["archetypes"]["generated"] == 4
    assert summary["archetypes"]["batches"] == 2
    rows = archetypes(config)
    assert [r[0] for r in rows] == ["A", "B", "C", "D"]
    assert rows[0][1] == "people who like Alpha"
    store = Store(config.parent / "data")
    embeddings = store.read_table("item_embeddings")
    assert embeddings["item_id"].to_pylist() == ["A", "B", "C", "D"]
    # 4 items cap each PCA at 3 components: 3 + 3 dims.
    assert embeddings.schema.field("vector").type.list_size == 6
    assert summary["pooling"]["bases"] == "fitted"


def test_second_run_generates_nothing_and_a_changed_title_regenerates_that_item(config):
    run(config)
    again = run(config)
    assert again["archetypes"]["generated"] == 0
    assert again["archetypes"]["up_to_date"] == 4
    assert ScriptedEngine.generate_calls == 2  # both from the first run

    set_title(config, "B", "Beta Reloaded")
    changed = run(config)
    assert changed["archetypes"]["generated"] == 1
    assert ScriptedEngine.generate_calls == 3
    assert changed["pooling"]["bases"] == "stored"  # B is projected with the stored bases
    store = Store(config.parent / "data")
    current = store.read_table("item_embeddings").to_pylist()
    assert len(current) == 4
    b = next(row for row in current if row["item_id"] == "B")
    items = {r["item_id"]: r["content_hash"] for r in store.read_table("items").to_pylist()}
    assert b["content_hash"] == items["B"]
    con = connect(store)
    assert con.sql("SELECT count(*) FROM archetypes").fetchall() == [(5,)]  # B's old one too
    current = con.sql("SELECT item_id, archetype FROM current_archetypes ORDER BY 1").fetchall()
    assert current[1] == ("B", "people who like Beta Reloaded")
    assert len(current) == 4


def test_a_retried_batch_replaces_its_part_instead_of_duplicating(config):
    ScriptedEngine.fail_next_generate = 1
    summary = run(config)
    assert summary["archetypes"]["generated"] == 4
    assert ScriptedEngine.generate_calls == 3  # one failed attempt, then both batches
    assert len(archetypes(config)) == 4

    # A rerun forced to regenerate writes the same parts again: still one row per item.
    store = Store(config.parent / "data")
    for part in store.part_paths("archetypes"):
        part.unlink()
    before = ScriptedEngine.generate_calls
    run(config)
    assert ScriptedEngine.generate_calls == before + 2
    assert len(archetypes(config)) == 4
    assert len(store.part_paths("archetypes")) == 2


def test_a_poisoned_item_is_isolated_recorded_and_skipped(config):
    set_title(config, "C", "POISON pill")
    summary = run(config)
    assert summary["archetypes"]["generated"] == 3
    assert summary["archetypes"]["failed"] == 1
    assert [r[0] for r in archetypes(config)] == ["A", "B", "D"]
    failures = (
        connect(Store(config.parent / "data"))
        .sql("SELECT item_id, reason, detail FROM archetype_failures")
        .fetchall()
    )
    assert failures == [("C", "engine_error", "RuntimeError: engine crashed on a poisoned item")]
    assert Store(config.parent / "data").read_table("item_embeddings").num_rows == 3


def test_empty_completions_and_nan_vectors_are_failures_not_rows(config):
    set_title(config, "A", "EMPTY")
    set_title(config, "D", "NANVEC")
    summary = run(config, engine_factory=NanEngine)
    assert summary["archetypes"]["generated"] == 2
    assert summary["archetypes"]["failed"] == 2
    failures = (
        connect(Store(config.parent / "data"))
        .sql("SELECT item_id, reason FROM archetype_failures ORDER BY item_id")
        .fetchall()
    )
    assert failures == [("A", "empty_completion"), ("D", "non_finite_embedding")]
    assert [r[0] for r in archetypes(config)] == ["B", "C"]


def test_metadata_too_long_for_the_context_is_cut_and_marked(config, monkeypatch):
    monkeypatch.setenv("GENAIR_LLM__MAX_PROMPT_TOKENS", "40")
    catalog = config.parent / "catalog.csv"
    catalog.write_text(catalog.read_text().replace(",drama\n", ",drama and " + "very " * 40 + "\n"))
    run(config)
    rows = {r[0]: r[2] for r in archetypes(config)}
    assert rows == {"A": True, "B": False, "C": True, "D": False}
    prompts = (
        connect(Store(config.parent / "data"))
        .sql("SELECT prompt FROM archetypes WHERE item_id = 'A'")
        .fetchall()
    )
    assert "very" not in prompts[0][0]
    assert "title is Alpha" in prompts[0][0]


def test_engines_are_shut_down_at_the_end(config):
    made = []

    def tracking(name, model_dir, settings, **options):
        made.append((ScriptedEngine(), settings, options))
        return made[-1][0]

    run(config, engine_factory=tracking)
    assert len(made) == 1  # one engine for both batches
    engine, settings, options = made[0]
    assert engine.closed
    assert (settings.max_new_tokens, settings.dtype, options) == (
        128,
        "float32",
        {"kv_cache_gib": 1.0},
    )


def test_a_crashed_engine_is_replaced_for_the_retry(config):
    made = []

    def tracking(name, model_dir, settings, **options):
        made.append(ScriptedEngine())
        return made[-1]

    ScriptedEngine.fail_next_generate = 1
    summary = run(config, engine_factory=tracking)
    assert summary["archetypes"]["generated"] == 4
    assert len(made) == 2
    assert all(engine.closed for engine in made)


def test_refit_on_request_and_a_size_change_without_refit_is_refused(config, monkeypatch):
    first = run(config)
    set_title(config, "B", "Beta Reloaded")
    monkeypatch.setenv("GENAIR_POOLING__REFIT", "true")
    refit = run(config)
    assert refit["pooling"]["bases"] == "fitted"
    assert refit["pooling"]["basis_id"] != first["pooling"]["basis_id"]

    monkeypatch.setenv("GENAIR_POOLING__REFIT", "false")
    monkeypatch.setenv("GENAIR_POOLING__INPUT_DIMS", "2")
    set_title(config, "C", "Gamma Returns")
    with pytest.raises(ValueError, match=r"pooling\.input_dims is 2: set pooling\.refit = true"):
        run(config)


def test_failed_items_are_skipped_next_time_unless_retry_is_asked(config, monkeypatch):
    set_title(config, "C", "POISON pill")
    run(config)
    calls = ScriptedEngine.generate_calls
    again = run(config)
    assert again["archetypes"]["failed_before"] == 1
    assert again["archetypes"]["batches"] == 0
    assert ScriptedEngine.generate_calls == calls

    monkeypatch.setenv("GENAIR_LLM__RETRY_FAILED", "true")
    retried = run(config)
    assert retried["archetypes"]["failed"] == 1
    failures = (
        connect(Store(config.parent / "data"))
        .sql("SELECT item_id FROM archetype_failures")
        .fetchall()
    )
    assert failures == [("C",)]  # replaced, not duplicated


def test_too_many_failures_stop_the_run(config, monkeypatch):
    monkeypatch.setenv("GENAIR_LLM__MAX_FAILED_ITEMS", "1")
    set_title(config, "A", "POISON one")
    set_title(config, "B", "POISON two")
    with pytest.raises(RuntimeError, match=r"2 items failed in this run"):
        run(config)


def test_bases_fitted_on_a_small_first_run_are_refitted_when_the_catalog_grows(config, monkeypatch):
    monkeypatch.setenv("GENAIR_LLM__MAX_ITEMS", "3")
    small = run(config)
    assert small["pooling"]["dims"] == 4  # 3 items: 2 + 2
    monkeypatch.delenv("GENAIR_LLM__MAX_ITEMS")
    grown = run(config)
    assert grown["pooling"]["bases"] == "fitted"
    assert grown["pooling"]["dims"] == 6


def test_a_batch_written_twice_replaces_its_part(config):
    @flow
    def same_batch_twice(config_path: str) -> None:
        settings = load_settings(Path(config_path))
        plan = plan_archetypes(settings)
        with EnginePool(ScriptedEngine) as engines:
            generate_archetype_batch(settings, plan.context, plan.batches[0], engines)
            generate_archetype_batch(settings, plan.context, plan.batches[0], engines)

    run(config, until="cooccurrence")
    same_batch_twice(str(config))
    store = Store(config.parent / "data")
    assert len(store.part_paths("archetypes")) == 1
    assert [r[0] for r in archetypes(config)] == ["A", "B"]
    assert ScriptedEngine.generate_calls == 2
