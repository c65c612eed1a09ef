"""genair_core.archetypes on small hand-made inputs."""

import pytest

from genair_core.archetypes import (
    Identity,
    fit_prompt,
    pending,
    plan_batches,
    settings_id,
)
from genair_core.engines.base import GenerationSettings
from genair_core.prompts import build_prompt

IDENTITY = Identity("m@1", "p1-x", "g-1", "vllm")


def words(text: str) -> int:
    return len(text.split())


def test_pending_is_what_has_no_archetype_for_the_current_content():
    candidates = [("b", "h2"), ("a", "h1"), ("c", "h3")]
    done = [("a", "h1"), ("c", "old")]  # c changed since its archetype was made
    assert pending(candidates, done) == [("b", "h2"), ("c", "h3")]


def test_batches_are_deterministic_and_keyed_by_content_and_identity():
    todo = [(f"i{n:02d}", f"h{n}") for n in range(5)]
    batches = plan_batches(list(reversed(todo)), batch_size=2, identity=IDENTITY)
    assert [b.item_ids for b in batches] == [["i00", "i01"], ["i02", "i03"], ["i04"]]
    assert [b.key for b in batches] == [b.key for b in plan_batches(todo, 2, IDENTITY)]
    changed = plan_batches([("i00", "new"), *todo[1:]], 2, IDENTITY)
    assert changed[0].key != batches[0].key
    assert changed[1].key == batches[1].key
    other_model = plan_batches(todo, 2, Identity("m@2", "p1-x", "g-1", "vllm"))
    assert other_model[1].key != batches[1].key


def test_halves_split_a_batch_under_new_keys():
    (batch,) = plan_batches([("a", "1"), ("b", "2"), ("c", "3")], 8, IDENTITY)
    left, right = batch.halves(IDENTITY)
    assert (left.item_ids, right.item_ids) == (["a"], ["b", "c"])
    assert len({batch.key, left.key, right.key}) == 3
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        plan_batches([], 0, IDENTITY)


def test_settings_id_changes_with_any_generation_setting():
    base = settings_id("vllm", GenerationSettings())
    assert base == settings_id("vllm", GenerationSettings())
    assert base != settings_id("transformers", GenerationSettings())
    assert base != settings_id("vllm", GenerationSettings(seed=1))
    assert base != settings_id("vllm", GenerationSettings(max_new_tokens=64))


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
