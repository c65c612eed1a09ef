"""The archetype and pooling stages under Prefect, with a scripted engine standing in for the LLM.

The engine's behaviour is driven by words in an item's title: POISON crashes the engine, EMPTY
gives an empty completion, NANVEC gives a NaN vector. Each test hands the pipeline an
EngineScript, the factory its engine pool makes engines with, which counts what they did. The
real engines are tested in test_engines.py and end to end in test_archetypes_ml100k.py.
"""

import json

import numpy as np
import pytest
from prefect.logging import disable_run_logger
from scripted_pipeline import scripted_pipeline
from small_dataset import write_small_dataset

from genair_core.llm.engines import EnginePool, GenerationSettings
from genair_core.llm.engines.base import Completion
from storage.bases import BasesFile
from storage.sql import connect
from storage.store import Store
from tasks.archetypes import generate_archetype_batch, plan_archetypes, record_engine_failure
from tasks.pooling import pool_item_embeddings
from tasks.settings import load_settings

pytestmark = pytest.mark.usefixtures("prefect_harness")
EOS = 0
DIM = 8


class EngineScript:
    """An engine factory: it makes `engine` engines and keeps what they share, per test."""

    def __init__(self, engine: type["ScriptedEngine"] | None = None) -> None:
        self.engine = engine or ScriptedEngine
        self.made: list[tuple[ScriptedEngine, GenerationSettings, dict]] = []
        self.generate_calls = 0
        self.fail_next_generate = 0  # how many upcoming generate calls raise a transient error

    def __call__(self, name, model_dir, settings, **options) -> "ScriptedEngine":
        engine = self.engine(self)
        self.made.append((engine, settings, options))
        return engine


class ScriptedEngine:
    name = "vllm"
    hidden_size = DIM
    eos_token_ids = frozenset({EOS})

    def __init__(self, script: EngineScript) -> None:
        self.script = script
        self.closed = False

    @staticmethod
    def token_ids(text):
        return [1 + sum(map(ord, word)) % 997 for word in text.split()]

    def render(self, prompt):
        return f"<user> {prompt} <assistant>"

    def count_tokens(self, text):
        return len(self.token_ids(text))

    def generate(self, prompts):
        self.script.generate_calls += 1
        if self.script.fail_next_generate:
            self.script.fail_next_generate -= 1
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
def config(tmp_path):
    model = tmp_path / "scripted-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    path = write_small_dataset(tmp_path)
    llm = f'[llm]\nmodel = "{model}"\nbatch_size = 2\nbatch_retries = 1\n'
    path.write_text(path.read_text() + llm)
    return path


@pytest.fixture
def script():
    return EngineScript()


def run(config, script, until="pooling"):
    return scripted_pipeline(str(config), script, until=until)


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


def test_every_item_gets_an_archetype_and_a_pooled_vector(config, script):
    summary = run(config, script)
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


def test_second_run_generates_nothing_and_a_changed_title_regenerates_that_item(config, script):
    run(config, script)
    again = run(config, script)
    assert again["archetypes"]["generated"] == 0
    assert again["archetypes"]["up_to_date"] == 4
    assert script.generate_calls == 2  # both from the first run

    set_title(config, "B", "Beta Reloaded")
    changed = run(config, script)
    assert changed["archetypes"]["generated"] == 1
    assert script.generate_calls == 3
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


def test_a_retried_batch_replaces_its_part_instead_of_duplicating(config, script):
    script.fail_next_generate = 1
    summary = run(config, script)
    assert summary["archetypes"]["generated"] == 4
    assert script.generate_calls == 3  # one failed attempt, then both batches
    assert len(archetypes(config)) == 4

    # A rerun forced to regenerate writes the same parts again: still one row per item.
    store = Store(config.parent / "data")
    for part in store.part_paths("archetypes"):
        part.unlink()
    before = script.generate_calls
    run(config, script)
    assert script.generate_calls == before + 2
    assert len(archetypes(config)) == 4
    assert len(store.part_paths("archetypes")) == 2


def test_a_poisoned_item_is_isolated_recorded_and_skipped(config, script):
    set_title(config, "C", "POISON pill")
    summary = run(config, script)
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
    summary = run(config, EngineScript(NanEngine))
    assert summary["archetypes"]["generated"] == 2
    assert summary["archetypes"]["failed"] == 2
    failures = (
        connect(Store(config.parent / "data"))
        .sql("SELECT item_id, reason FROM archetype_failures ORDER BY item_id")
        .fetchall()
    )
    assert failures == [("A", "empty_completion"), ("D", "non_finite_embedding")]
    assert [r[0] for r in archetypes(config)] == ["B", "C"]


def test_metadata_too_long_for_the_context_is_cut_and_marked(config, script, monkeypatch):
    monkeypatch.setenv("GENAIR_LLM__MAX_PROMPT_TOKENS", "40")
    catalog = config.parent / "catalog.csv"
    catalog.write_text(catalog.read_text().replace(",drama\n", ",drama and " + "very " * 40 + "\n"))
    run(config, script)
    rows = {r[0]: r[2] for r in archetypes(config)}
    assert rows == {"A": True, "B": False, "C": True, "D": False}
    prompts = (
        connect(Store(config.parent / "data"))
        .sql("SELECT prompt FROM archetypes WHERE item_id = 'A'")
        .fetchall()
    )
    assert "very" not in prompts[0][0]
    assert "title is Alpha" in prompts[0][0]


def test_engines_are_shut_down_at_the_end(config, script):
    run(config, script)
    assert len(script.made) == 1  # one engine for both batches
    engine, settings, options = script.made[0]
    assert engine.closed
    assert (settings.max_new_tokens, settings.dtype, options) == (
        128,
        "bfloat16",
        {"kv_cache_gib": 1.0},
    )


def test_a_crashed_engine_is_replaced_for_the_retry(config, script):
    script.fail_next_generate = 1
    summary = run(config, script)
    assert summary["archetypes"]["generated"] == 4
    assert len(script.made) == 2
    assert all(engine.closed for engine, _, _ in script.made)


def test_refit_on_request_and_a_size_change_without_refit_is_refused(config, script, monkeypatch):
    first = run(config, script)
    set_title(config, "B", "Beta Reloaded")
    monkeypatch.setenv("GENAIR_POOLING__REFIT", "true")
    refit = run(config, script)
    assert refit["pooling"]["bases"] == "fitted"
    assert refit["pooling"]["basis_id"] != first["pooling"]["basis_id"]

    monkeypatch.setenv("GENAIR_POOLING__REFIT", "false")
    monkeypatch.setenv("GENAIR_POOLING__INPUT_DIMS", "2")
    set_title(config, "C", "Gamma Returns")
    with pytest.raises(ValueError, match=r"pooling\.input_dims is 2: set pooling\.refit = true"):
        run(config, script)


def test_failed_items_are_skipped_next_time_unless_retry_is_asked(config, script, monkeypatch):
    set_title(config, "C", "POISON pill")
    run(config, script)
    calls = script.generate_calls
    again = run(config, script)
    assert again["archetypes"]["failed_before"] == 1
    assert again["archetypes"]["batches"] == 0
    assert script.generate_calls == calls

    monkeypatch.setenv("GENAIR_LLM__RETRY_FAILED", "true")
    retried = run(config, script)
    assert retried["archetypes"]["failed"] == 1
    failures = (
        connect(Store(config.parent / "data"))
        .sql("SELECT item_id FROM archetype_failures")
        .fetchall()
    )
    assert failures == [("C",)]  # replaced, not duplicated


def test_too_many_failures_stop_the_run(config, script, monkeypatch):
    monkeypatch.setenv("GENAIR_LLM__MAX_FAILED_ITEMS", "1")
    set_title(config, "A", "POISON one")
    set_title(config, "B", "POISON two")
    with pytest.raises(RuntimeError, match=r"2 items failed in this run"):
        run(config, script)


def test_bases_fitted_on_a_small_first_run_are_refitted_when_the_catalog_grows(
    config, script, monkeypatch
):
    monkeypatch.setenv("GENAIR_LLM__MAX_ITEMS", "3")
    small = run(config, script)
    assert small["pooling"]["dims"] == 4  # 3 items: 2 + 2
    monkeypatch.delenv("GENAIR_LLM__MAX_ITEMS")
    grown = run(config, script)
    assert grown["pooling"]["bases"] == "fitted"
    assert grown["pooling"]["dims"] == 6


def test_a_batch_written_twice_replaces_its_part(config, script):
    run(config, script, until="cooccurrence")
    settings = load_settings(config)
    with disable_run_logger():
        plan = plan_archetypes.fn(settings)
    assert (plan.candidates, plan.pending, len(plan.batches)) == (4, 4, 2)
    with EnginePool(script) as engines:
        for _ in range(2):
            counts = generate_archetype_batch.fn(settings, plan.context, plan.batches[0], engines)
            assert (counts["generated"], counts["failed"]) == (2, 0)
    store = Store(config.parent / "data")
    assert len(store.part_paths("archetypes")) == 1
    assert [r[0] for r in archetypes(config)] == ["A", "B"]
    assert script.generate_calls == 2
    assert len(script.made) == 1


def test_an_item_whose_batch_of_one_failed_is_recorded(config, script):
    run(config, script, until="cooccurrence")
    settings = load_settings(config)
    with disable_run_logger():
        plan = plan_archetypes.fn(settings)
        (single,) = plan.batches[0].halves(plan.context.recipe)[:1]
        record_engine_failure.fn(settings, plan.context, single, "RuntimeError: gone")
    failures = (
        connect(Store(config.parent / "data"))
        .sql("SELECT item_id, reason, detail, run_id FROM archetype_failures")
        .fetchall()
    )
    assert failures == [("A", "engine_error", "RuntimeError: gone", "local")]


def test_pooling_stores_its_bases_and_reruns_when_they_are_gone_or_a_refit_is_asked(config, script):
    run(config, script, until="archetypes")
    settings = load_settings(config)
    store = Store(config.parent / "data")
    with disable_run_logger():
        recipe = plan_archetypes.fn(settings).recipe
        first = pool_item_embeddings.fn(settings, recipe)
        assert (first["bases"], first["skipped"]) == ("fitted", False)
        bases = BasesFile(store, recipe.model_id, recipe.prompt_version, recipe.settings_id)
        assert bases.exists()
        assert pool_item_embeddings.fn(settings, recipe)["skipped"] is True

        bases.path.unlink()  # the archetypes did not change, but the bases must be stored again
        again = pool_item_embeddings.fn(settings, recipe)
        assert (again["bases"], again["skipped"]) == ("fitted", False)
        assert again["basis_id"] == first["basis_id"]
        assert bases.exists()

        bases.path.write_bytes(b"damaged")  # a refit replaces the file without reading it
        refit = settings.model_copy(
            update={"pooling": settings.pooling.model_copy(update={"refit": True})}
        )
        assert pool_item_embeddings.fn(refit, recipe)["bases"] == "fitted"
        assert bases.read() is not None
