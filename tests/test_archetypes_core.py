"""genair_core.llm.archetypes on small hand-made inputs."""

import pytest

from genair_core.config import LlmConfig
from genair_core.llm.archetypes import (
    ArchetypeRecipe,
    archetype_recipe,
    batch_items,
    candidates,
    fit_prompt,
    generation_settings_id,
    keyed_by_item,
    make_plan,
    pending,
    plan_batches,
)
from genair_core.llm.engines import generation_settings
from genair_core.llm.prompts import PROMPT_VERSION, build_prompt

RECIPE = ArchetypeRecipe("m@1", "p1-x", "g-1", "vllm")


def words(text: str) -> int:
    return len(text.split())


def test_pending_is_what_has_no_archetype_for_the_current_content():
    candidates = [("b", "h2"), ("a", "h1"), ("c", "h3")]
    done = [("a", "h1"), ("c", "old")]  # c changed since its archetype was made
    assert pending(candidates, done) == [("b", "h2"), ("c", "h3")]


def test_batches_are_deterministic_and_keyed_by_content_and_recipe():
    todo = [(f"i{n:02d}", f"h{n}") for n in range(5)]
    batches = plan_batches(list(reversed(todo)), batch_size=2, recipe=RECIPE)
    assert [b.item_ids for b in batches] == [["i00", "i01"], ["i02", "i03"], ["i04"]]
    assert [b.key for b in batches] == [b.key for b in plan_batches(todo, 2, RECIPE)]
    changed = plan_batches([("i00", "new"), *todo[1:]], 2, RECIPE)
    assert changed[0].key != batches[0].key
    assert changed[1].key == batches[1].key
    other_model = plan_batches(todo, 2, ArchetypeRecipe("m@2", "p1-x", "g-1", "vllm"))
    assert other_model[1].key != batches[1].key


def test_halves_split_a_batch_under_new_keys():
    (batch,) = plan_batches([("a", "1"), ("b", "2"), ("c", "3")], 8, RECIPE)
    left, right = batch.halves(RECIPE)
    assert (left.item_ids, right.item_ids) == (["a"], ["b", "c"])
    assert len({batch.key, left.key, right.key}) == 3
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        plan_batches([], 0, RECIPE)


def test_settings_id_changes_with_any_generation_setting():
    base = generation_settings_id("vllm", generation_settings(LlmConfig()))
    assert base == generation_settings_id("vllm", generation_settings(LlmConfig()))
    assert base != generation_settings_id("transformers", generation_settings(LlmConfig()))
    assert base != generation_settings_id("vllm", generation_settings(LlmConfig(seed=1)))
    assert base != generation_settings_id("vllm", generation_settings(LlmConfig(max_new_tokens=64)))
    assert base != generation_settings_id(
        "vllm", generation_settings(LlmConfig()), max_prompt_tokens=40
    )


def test_the_default_recipe_keeps_its_settings_id():
    # The id the ml-100k archetypes were made under: a change here regenerates all of them.
    recipe = archetype_recipe(LlmConfig(), "m@1")
    assert recipe == ArchetypeRecipe("m@1", PROMPT_VERSION, "g-dfd0967e93", "vllm")
    assert archetype_recipe(LlmConfig(max_prompt_tokens=40), "m@1").settings_id == "g-5f458579ec"


def test_candidates_are_the_catalog_or_the_kcore_in_id_order_up_to_max_items():
    catalog = [("c", "3"), ("a", "1"), ("b", "2")]
    assert candidates(LlmConfig(), catalog, None) == [("a", "1"), ("b", "2"), ("c", "3")]
    assert candidates(LlmConfig(max_items=2), catalog, None) == [("a", "1"), ("b", "2")]
    kcore = LlmConfig(items="kcore", max_items=1)
    assert candidates(kcore, catalog, ["c", "b"]) == [("b", "2")]
    with pytest.raises(ValueError, match="k-core kept"):
        candidates(kcore, catalog, None)


def test_a_plan_skips_what_is_done_and_what_failed_unless_retried():
    catalog = [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]
    done = [("a", "1"), ("b", "old")]
    failed = [("c", "3")]
    llm = LlmConfig(batch_size=2)
    plan = make_plan(
        llm, RECIPE, catalog, done, failed, kept=None, item_type="movie", context_length=8192
    )
    assert [b.item_ids for b in plan.batches] == [["b", "d"]]
    assert (plan.candidates, plan.up_to_date, plan.failed_before, plan.pending) == (4, 2, 1, 2)
    assert plan.max_prompt_tokens == 8192 - 128
    assert plan.context.item_type == "movie"
    retry = make_plan(
        LlmConfig(batch_size=2, retry_failed=True, max_prompt_tokens=100),
        RECIPE,
        catalog,
        done,
        failed,
        kept=None,
        item_type="movie",
        context_length=8192,
    )
    assert [b.item_ids for b in retry.batches] == [["b", "c"], ["d"]]
    assert (retry.failed_before, retry.max_prompt_tokens) == (0, 100)
    with pytest.raises(ValueError, match="leaves no room for a prompt"):
        make_plan(llm, RECIPE, catalog, [], [], kept=None, item_type="movie", context_length=128)


def test_batch_items_are_the_planned_rows_or_an_error():
    (batch,) = plan_batches([("a", "1"), ("b", "2")], 8, RECIPE)
    rows = [{"item_id": "b", "content_hash": "2"}, {"item_id": "a", "content_hash": "1"}]
    assert [r["item_id"] for r in batch_items(batch, rows)] == ["a", "b"]
    with pytest.raises(ValueError, match="'b' changed or vanished"):
        batch_items(batch, [rows[1], {"item_id": "b", "content_hash": "new"}])
    keyed = keyed_by_item(RECIPE, rows)
    assert list(keyed.values()) == rows
    assert next(iter(keyed)) == plan_batches([("b", "2")], 1, RECIPE)[0].key


ITEM = {
    "item_id": "1",
    "title": "Toy Story",
    "categories": ["Animation", "Comedy"],
    "release_year": 1995,
    "attributes": [("studio", "Pixar"), ("tagline", "to infinity " * 5)],
}


def test_a_prompt_that_fits_is_untouched():
    prompt, truncated = fit_prompt(ITEM, "movie", words, max_tokens=1000)
    assert (prompt, truncated) == (build_prompt(ITEM, "movie"), False)


def test_too_long_metadata_drops_fields_from_the_end_as_few_as_possible():
    full = words(build_prompt(ITEM, "movie"))
    without_tagline = {**ITEM, "attributes": [("studio", "Pixar")]}
    limit = words(build_prompt(without_tagline, "movie"))
    assert limit < full
    prompt, truncated = fit_prompt(ITEM, "movie", words, max_tokens=limit)
    assert truncated
    assert prompt == build_prompt(without_tagline, "movie")
    title_only = build_prompt({"title": "Toy Story"}, "movie")
    assert fit_prompt(ITEM, "movie", words, words(title_only)) == (title_only, True)


def test_a_title_that_alone_does_not_fit_is_an_error():
    with pytest.raises(ValueError, match="does not fit 3 tokens even with its title alone"):
        fit_prompt(ITEM, "movie", words, max_tokens=3)
