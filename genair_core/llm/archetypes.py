"""From catalog rows to archetypes and their two hidden-state vectors, a batch at a time.

    recipe = archetype_recipe(llm, model_id)
    plan = make_plan(llm, recipe, catalog, done, failed, kept=None, item_type="movie",
                     context_length=8192)
    rows, failures = make_archetypes(engine, items, "movie", recipe, plan.max_prompt_tokens, run_id)

An archetype is keyed by (item_id, content_hash, model_id, prompt_version, settings_id): an item
whose metadata, model, prompt wording or generation settings changed gets a new one; an item
with all five unchanged is never generated again.

A batch's key is a hash of the recipe and of its items' (item_id, content_hash) pairs, so a
retried batch writes the same part file again (replacing it) instead of adding a second copy.

A backfill (genair_core.llm.backfill.Backfill) regenerates chosen items even though their archetype
exists: the new rows land in new parts, and the older rows of the same key are then dropped from
the parts that hold them (storage.archetype_tables.drop_replaced_archetypes), so every key keeps
one row.

Nothing that fails validation becomes an archetype row: an empty completion or a non-finite
vector becomes a failure row with its reason. Metadata too long for the model's context is cut
(whole fields from the end of the prompt first) and the row says `truncated`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import numpy as np

from genair_core.config import LlmConfig
from genair_core.llm.backfill import Backfill
from genair_core.llm.engines.base import (
    ArchetypeEngine,
    GenerationSettings,
    completion_span,
    generation_settings,
)
from genair_core.llm.prompts import ATTRIBUTES_COLUMN, PROMPT_FIELDS, PROMPT_VERSION, build_prompt

Row = dict[str, object]


@dataclass(frozen=True)
class ArchetypeRecipe:
    """How archetypes are made. model_id, prompt_version and settings_id are part of an
    archetype's key; `engine` is already inside settings_id and is kept to be written on rows."""

    model_id: str
    prompt_version: str
    settings_id: str
    engine: str


@dataclass(frozen=True)
class ArchetypeBatch:
    """Items generated together, as one Prefect task and one part file."""

    key: str
    items: tuple[tuple[str, str], ...]  # (item_id, content_hash)

    @property
    def item_ids(self) -> list[str]:
        return [item_id for item_id, _ in self.items]

    def halves(self, recipe: ArchetypeRecipe) -> list[ArchetypeBatch]:
        """Two smaller batches (new keys), to find which item makes this one fail."""
        mid = len(self.items) // 2
        return [_batch(recipe, part) for part in (self.items[:mid], self.items[mid:]) if part]


@dataclass(frozen=True)
class BatchContext:
    """What every batch task needs besides its batch: small, so task inputs stay small."""

    recipe: ArchetypeRecipe
    item_type: str
    max_prompt_tokens: int


def backfill_report(
    plan: ArchetypePlan, then: Sequence[str], shown: int = 50
) -> tuple[dict[str, object], str]:
    """What a backfill of `plan` would do, as a summary and as Markdown: the items it would
    regenerate (the first `shown` listed), its batches and recipe, and the stages it would run
    after the archetypes (`then`)."""
    item_ids = [item_id for batch in plan.batches for item_id in batch.item_ids]
    summary: dict[str, object] = {
        "dry_run": True,
        "items": len(item_ids),
        "item_ids": item_ids[:shown],
        "batches": len(plan.batches),
        "model_id": plan.recipe.model_id,
        "prompt_version": plan.recipe.prompt_version,
        "settings_id": plan.recipe.settings_id,
        "then": list(then),
    }
    listed = ", ".join(f"`{i}`" for i in item_ids[:shown]) or "(none)"
    more = f" and {len(item_ids) - shown} more" if len(item_ids) > shown else ""
    markdown = "\n".join(
        [
            "# Backfill (dry run): nothing was written",
            "",
            f"- items to regenerate: **{len(item_ids)}** in {len(plan.batches)} batches",
            f"- items: {listed}{more}",
            f"- model `{plan.recipe.model_id}`, prompt `{plan.recipe.prompt_version}`, "
            f"settings `{plan.recipe.settings_id}`",
            f"- then: {', '.join(then) or '(nothing)'}",
        ]
    )
    return summary, markdown


@dataclass(frozen=True)
class ArchetypePlan:
    recipe: ArchetypeRecipe
    batches: tuple[ArchetypeBatch, ...]
    candidates: int  # items that should have an archetype
    up_to_date: int  # of those, items whose archetype already exists
    failed_before: int  # of those, items whose archetype failed in an earlier run (skipped)
    item_type: str
    max_prompt_tokens: int

    @property
    def context(self) -> BatchContext:
        return BatchContext(self.recipe, self.item_type, self.max_prompt_tokens)

    @property
    def pending(self) -> int:
        return sum(len(batch.items) for batch in self.batches)


def archetype_recipe(llm: LlmConfig, model_id: str) -> ArchetypeRecipe:
    """The recipe of the archetypes `llm` asks for from the model `model_id`."""
    return ArchetypeRecipe(
        model_id=model_id,
        prompt_version=PROMPT_VERSION,
        settings_id=generation_settings_id(
            llm.engine, generation_settings(llm), max_prompt_tokens=llm.max_prompt_tokens
        ),
        engine=llm.engine,
    )


def make_plan(
    llm: LlmConfig,
    recipe: ArchetypeRecipe,
    catalog: Sequence[tuple[str, str]],
    done: Sequence[tuple[str, str]],
    failed: Sequence[tuple[str, str]],
    *,
    kept: Collection[str] | None,
    item_type: str,
    context_length: int,
    backfill: Backfill | None = None,
    updated_at: Mapping[str, datetime] | None = None,
) -> ArchetypePlan:
    """The batches still to generate under `recipe`.

    `catalog`: every item's (item_id, content_hash); `kept`: the item ids the k-core kept (read
    when llm.items is "kcore"); `done` and `failed`: the pairs that have an archetype, or a
    failure record, under `recipe`. Failed items are skipped unless llm.retry_failed is set.
    With `backfill`, the plan holds exactly the items it picks, done or failed before or not
    (`updated_at`: {item_id: items.updated_at}, for a backfill since a date).
    """
    wanted = candidates(llm, catalog, kept)
    failed_before = [] if llm.retry_failed else list(failed)
    if backfill is None:
        todo = pending(wanted, [*done, *failed_before])
    else:
        todo = backfill.pick(catalog, wanted, updated_at, _left_out_by(llm))
    return ArchetypePlan(
        recipe=recipe,
        batches=tuple(plan_batches(todo, llm.batch_size, recipe)),
        candidates=len(wanted),
        up_to_date=len(done),
        failed_before=len(failed_before),
        item_type=item_type,
        max_prompt_tokens=prompt_budget(llm, context_length),
    )


def candidates(
    llm: LlmConfig, catalog: Sequence[tuple[str, str]], kept: Collection[str] | None
) -> list[tuple[str, str]]:
    """The (item_id, content_hash) pairs that should have an archetype, in item_id order: every
    catalog item, or only those the k-core kept (llm.items), the first llm.max_items of them."""
    if llm.items == "kcore":
        if kept is None:
            raise ValueError('llm.items is "kcore": the item ids the k-core kept are needed')
        kept = set(kept)
        catalog = [pair for pair in catalog if pair[0] in kept]
    ordered = sorted(catalog, key=lambda pair: pair[0])
    return ordered[: llm.max_items] if llm.max_items else ordered


def _left_out_by(llm: LlmConfig) -> str:
    rules = ['llm.items is "kcore" and the k-core dropped them'] if llm.items == "kcore" else []
    if llm.max_items:
        rules.append(f"llm.max_items = {llm.max_items} keeps the first items by item_id")
    return "; ".join(rules) or "they are not candidates"


def prompt_budget(llm: LlmConfig, context_length: int) -> int:
    """The tokens a rendered prompt may take: llm.max_prompt_tokens, or what the model's context
    leaves after llm.max_new_tokens."""
    budget = llm.max_prompt_tokens or context_length - llm.max_new_tokens
    if budget < 1:
        raise ValueError(
            f"llm.max_new_tokens ({llm.max_new_tokens}) leaves no room for a prompt in the "
            f"model's context ({context_length} tokens)"
        )
    return budget


def pending(
    candidates: Sequence[tuple[str, str]], done: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The (item_id, content_hash) pairs of `candidates` that have no archetype yet."""
    finished = set(done)
    return sorted(pair for pair in set(candidates) if pair not in finished)


def generation_settings_id(
    engine: str, settings: GenerationSettings, max_prompt_tokens: int = 0
) -> str:
    """A short id of the engine and generation settings (sampling, seed, dtype, max tokens, and
    the prompt budget, which decides where long metadata is cut)."""
    spec = {"engine": engine, **asdict(settings)}
    if max_prompt_tokens:
        spec["max_prompt_tokens"] = max_prompt_tokens
    spec = json.dumps(spec, sort_keys=True)
    return "g-" + hashlib.sha256(spec.encode()).hexdigest()[:10]


def plan_batches(
    todo: Sequence[tuple[str, str]], batch_size: int, recipe: ArchetypeRecipe
) -> list[ArchetypeBatch]:
    """Cut (item_id, content_hash) pairs, in item_id order, into batches of `batch_size`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ordered = sorted(todo)
    return [
        _batch(recipe, ordered[start : start + batch_size])
        for start in range(0, len(ordered), batch_size)
    ]


def item_key(recipe: ArchetypeRecipe, item_id: str, content_hash: str) -> str:
    """The key of one item's archetype attempt (its failure record is stored under it)."""
    return _batch(recipe, [(item_id, content_hash)]).key


def keyed_by_item(recipe: ArchetypeRecipe, rows: Iterable[Row]) -> dict[str, Row]:
    """Archetype or failure rows under their item keys."""
    return {item_key(recipe, str(row["item_id"]), str(row["content_hash"])): row for row in rows}


def batch_items(batch: ArchetypeBatch, rows: Iterable[Row]) -> list[Row]:
    """The catalog rows of `batch`'s items, in its order, from `rows` (read by item_id); an item
    whose content changed or that vanished since the plan raises ValueError."""
    by_id = {row["item_id"]: row for row in rows}
    items = []
    for item_id, content_hash in batch.items:
        row = by_id.get(item_id)
        if row is None or row["content_hash"] != content_hash:
            raise ValueError(
                f"item {item_id!r} changed or vanished since the plan was made; rerun the flow"
            )
        items.append(row)
    return items


def _batch(recipe: ArchetypeRecipe, pairs: Sequence[tuple[str, str]]) -> ArchetypeBatch:
    spec = json.dumps([asdict(recipe), [list(p) for p in pairs]], sort_keys=True)
    key = hashlib.sha256(spec.encode()).hexdigest()[:20]
    return ArchetypeBatch(key=key, items=tuple((str(i), str(h)) for i, h in pairs))


def fit_prompt(
    item: Mapping[str, object],
    item_type: str,
    count_tokens: Callable[[str], int],
    max_tokens: int,
) -> tuple[str, bool]:
    """The item's prompt and whether it had to be cut to fit `max_tokens` (as rendered).

    Fields are dropped from the end of the prompt (attributes last to first, then features,
    description, ... up to the title) until it fits; the fewest fields are dropped (binary
    search). The title alone always stays: each value is already cut to 100 characters.
    """
    prompt = build_prompt(item, item_type)
    if count_tokens(prompt) <= max_tokens:
        return prompt, False
    fields = _prompt_fields(item)
    lo, hi = 1, len(fields) - 1  # keep `n` first fields; `len(fields)` is known not to fit
    best = build_prompt(_keep_fields(item, fields[:1]), item_type)
    while lo <= hi:
        n = (lo + hi) // 2
        candidate = build_prompt(_keep_fields(item, fields[:n]), item_type)
        if count_tokens(candidate) <= max_tokens:
            best, lo = candidate, n + 1
        else:
            hi = n - 1
    if count_tokens(best) > max_tokens:
        raise ValueError(
            f"the prompt of item {item.get('item_id')!r} does not fit {max_tokens} tokens even "
            "with its title alone: raise llm.max_prompt_tokens or lower llm.max_new_tokens"
        )
    return best, True


def _prompt_fields(item: Mapping[str, object]) -> list[tuple[str, str | None]]:
    """(column, attribute key) of every field in prompt order."""
    fields: list[tuple[str, str | None]] = [(column, None) for column, _ in PROMPT_FIELDS]
    attributes = item.get(ATTRIBUTES_COLUMN) or []
    pairs = attributes.items() if isinstance(attributes, Mapping) else attributes
    fields += [(ATTRIBUTES_COLUMN, str(k)) for k, _ in sorted(pairs, key=lambda kv: str(kv[0]))]
    return fields


def _keep_fields(item: Mapping[str, object], keep: list[tuple[str, str | None]]) -> Row:
    columns = {column for column, key in keep if key is None}
    keys = {key for column, key in keep if key is not None}
    kept: Row = {column: item.get(column) for column in columns}
    attributes = item.get(ATTRIBUTES_COLUMN) or []
    pairs = attributes.items() if isinstance(attributes, Mapping) else attributes
    kept[ATTRIBUTES_COLUMN] = [(k, v) for k, v in pairs if str(k) in keys]
    return kept


def make_archetypes(
    engine: ArchetypeEngine,
    items: Sequence[Mapping[str, object]],
    item_type: str,
    recipe: ArchetypeRecipe,
    max_prompt_tokens: int,
    run_id: str,
    now: datetime | None = None,
) -> tuple[list[Row], list[Row]]:
    """Generate and embed one batch; returns (archetype rows, failure rows).

    Rows follow genair_core.tables.archetypes_schema / ARCHETYPE_FAILURES.
    """
    now = now or datetime.now(UTC)

    def rendered_tokens(prompt: str) -> int:
        return engine.count_tokens(engine.render(prompt))

    prompts, truncated = [], []
    for item in items:
        prompt, cut = fit_prompt(item, item_type, rendered_tokens, max_prompt_tokens)
        prompts.append(prompt)
        truncated.append(cut)
    completions = engine.generate([engine.render(p) for p in prompts])

    rows: list[Row] = []
    failures: list[Row] = []
    good = []
    for i, (item, completion) in enumerate(zip(items, completions, strict=True)):
        n_gen = completion_span(completion.completion_token_ids, engine.eos_token_ids)
        ends_at_eos = (
            n_gen > 0 and completion.completion_token_ids[n_gen - 1] in engine.eos_token_ids
        )
        n_text = n_gen - 1 if ends_at_eos else n_gen
        if not completion.text.strip() or n_text == 0:
            failures.append(
                _failure(
                    item,
                    recipe,
                    "empty_completion",
                    "the model wrote nothing",
                    completion.text,
                    now,
                    run_id,
                )
            )
        else:
            good.append(i)

    vectors = engine.embed(
        [completions[i].prompt_token_ids for i in good],
        [completions[i].completion_token_ids for i in good],
    )
    for i, (input_emb, gen_emb) in zip(good, vectors, strict=True):
        item, completion = items[i], completions[i]
        bad = [
            name
            for name, v in (("input_emb", input_emb), ("gen_emb", gen_emb))
            if not np.isfinite(v).all()
        ]
        if bad:
            detail = f"{' and '.join(bad)} has NaN or infinite values"
            failures.append(
                _failure(item, recipe, "non_finite_embedding", detail, completion.text, now, run_id)
            )
            continue
        rows.append(
            {
                **_provenance(item, recipe),
                "engine": recipe.engine,
                "prompt": prompts[i],
                "archetype": completion.text.strip(),
                "prompt_tokens": len(completion.prompt_token_ids),
                "completion_tokens": len(completion.completion_token_ids),
                "finish_reason": completion.finish_reason,
                "truncated": truncated[i],
                "input_emb": np.asarray(input_emb, dtype=np.float32),
                "gen_emb": np.asarray(gen_emb, dtype=np.float32),
                "created_at": now,
                "run_id": run_id,
            }
        )
    return rows, failures


def engine_failure(
    item: Mapping[str, object], recipe: ArchetypeRecipe, error: str, run_id: str
) -> Row:
    """The failure row of an item whose batch of one still failed in the engine."""
    return _failure(item, recipe, "engine_error", error, None, datetime.now(UTC), run_id)


def _provenance(item: Mapping[str, object], recipe: ArchetypeRecipe) -> Row:
    return {
        "item_id": item["item_id"],
        "content_hash": item["content_hash"],
        "model_id": recipe.model_id,
        "prompt_version": recipe.prompt_version,
        "settings_id": recipe.settings_id,
    }


def _failure(
    item: Mapping[str, object],
    recipe: ArchetypeRecipe,
    reason: str,
    detail: str,
    archetype: str | None,
    now: datetime,
    run_id: str,
) -> Row:
    return {
        **_provenance(item, recipe),
        "reason": reason,
        "detail": detail[:2000],
        "archetype": archetype,
        "created_at": now,
        "run_id": run_id,
    }
