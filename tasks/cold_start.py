"""The cold-start evaluation (genair_core.recommenders.cold_start) over a storage root whose runs
were trained as of T and whose tables were refreshed since: every finished run and the baselines,
each one a step of its own (skipped when its inputs are unchanged), then the report."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from functools import cache, partial

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from genair_core.recommenders.cold_start import (
    GENAIR_FAMILY,
    AlignedScores,
    ColdStartLog,
    ContentScores,
    FixedScores,
    LastBatch,
    MixedScores,
    ModelScores,
    Scored,
    Scorer,
    Standardised,
    Verdict,
    evaluate_all,
    method_name,
    render_results,
    results_table,
    run_tag,
    unremedied_run,
    valid_new_ndcg,
    variant_of,
    verdict,
)
from genair_core.recommenders.serving import ServedRun, serving_model
from storage.recommenders import (
    finished_runs,
    read_catalog_vectors,
    read_stored_run,
    validation_ndcg,
)
from storage.store import Store, fingerprint
from tasks.common import TASK_DEFAULTS, run_step, store_for
from tasks.recommend import served_run
from tasks.settings import ConfigError, Settings

COLD_START_VERSION = 1
TABLE = "cold_start_targets"
# What the evaluation reads of each table: its steps' fingerprints cover these values only, so a
# refresh that rewrites the same values (with the run's timestamps) leaves every step up to date.
INPUTS = {
    "items": ["item_id"],
    "interactions": ["user_id", "item_id", "timestamp"],
    "item_embeddings": ["item_id", "vector"],
    "calibrated_embeddings": ["item_id", "vector"],
}
MIX_WEIGHTS = (0.25, 0.5, 1.0, 2.0)
# The cold items' shift, in deviations of the warm items' scores (AlignedScores).
ALIGN_OFFSETS = (-1.0, -0.5, 0.0, 0.5)
WARM_WITHIN = 0.05  # target 3: warm NDCG@10 moves by at most 5% with the new items in
MakeScorers = Callable[[], dict[str, Scorer]]


@task(name="evaluate-cold-start", **TASK_DEFAULTS)
def evaluate_cold_start(
    settings: Settings,
    as_of: datetime,
    baseline_seeds: tuple[int, ...] = (44, 45, 46),
    mix_weights: tuple[float, ...] = MIX_WEIGHTS,
    align_offsets: tuple[float, ...] = ALIGN_OFFSETS,
) -> dict[str, object]:
    """Score every interaction after `as_of` with the baselines, each finished run (all trained
    as of then) and each GenAIR-family run's remedies for cold items: mixed with the content-only
    score (`+mix`, `mix_weights`; genair_core.recommenders.cold_start.MixedScores), and with the
    cold items' scores, its own (`+align`) or content-only (`+switch`), aligned with the warm
    items' and shifted (`align_offsets`; AlignedScores). Write the rows, the report
    `cold_start.md` and an artifact."""
    store = store_for(settings)
    logger = get_run_logger()
    runs = validation_ndcg(store, finished_runs(store))
    if not runs:
        raise ConfigError(f"no finished recommender run in {store.root} to evaluate")
    stored = {name: read_stored_run(store, name) for name in runs}
    orders = {tuple(sorted(run.item_ids or ())) for run in stored.values()}
    if len(orders) != 1 or not next(iter(orders)):
        raise ConfigError("the runs were not all trained on the same items: train them as of T")
    catalog_ids, raw = read_catalog_vectors(store, "raw")
    calibrated_ids, calibrated = read_catalog_vectors(store, "calibrated")
    interactions = store.read_table("interactions", columns=["user_id", "item_id", "timestamp"])
    log = ColdStartLog.of(interactions, as_of, next(iter(orders)), catalog_ids)
    tables = {name: store.columns_sha256(name, columns) for name, columns in INPUTS.items()}

    key = as_of.strftime("%Y%m%dT%H%M%SZ")
    results: list[Scored] = []

    def score(seed: int, methods: Mapping[str, str], make_scorers: MakeScorers) -> None:
        """Each of `methods` (name -> the id its rows depend on) a step of its own, skipped when
        its inputs are unchanged; the first to run scores every stale one in one pass
        (evaluate_all), so a run's forward pass serves its remedies too. Scorers are made only
        when a step runs (a skipped run builds no model)."""
        steps = {
            method: (
                f"{method}-s{seed}",
                fingerprint(COLD_START_VERSION, as_of.isoformat(), run_id, tables),
            )
            for method, run_id in methods.items()
        }
        stale = {m for m, (part, inputs) in steps.items() if not _fresh(store, part, inputs)}
        done: dict[str, object] = {}
        for method, (partition, inputs) in steps.items():

            def produce(method: str = method, partition: str = partition) -> tuple[dict, dict]:
                if method not in done:
                    scorers = make_scorers()
                    done.update(evaluate_all(log, {m: scorers[m] for m in stale | {method}}))
                    stale.clear()
                rows = done.pop(method)
                info = store.write_part(TABLE, partition, key, rows)
                return {TABLE: info}, {"targets": rows.num_rows}

            run_step(store, f"cold-start-{partition}", inputs, produce)
            results.append(Scored(method, seed, store.read_parts(TABLE, partition)))
            logger.info("cold start: %s scored", partition)

    content = {
        "content-raw": partial(ContentScores.of, log, catalog_ids, raw),
        "content-calibrated": partial(ContentScores.of, log, calibrated_ids, calibrated),
    }
    for seed in baseline_seeds:
        random_new = partial(FixedScores.random_new, log, seed)
        score(seed, {"random-new": ""}, lambda make=random_new: {"random-new": make()})
    score(0, {"popularity": ""}, lambda: {"popularity": FixedScores.popularity(log)})
    for method, make_content in content.items():
        score(0, {method: ""}, lambda method=method, make=make_content: {method: make()})
    # The remedy mixes in the content space that is better on the validation window.
    space = max(content, key=lambda m: valid_new_ndcg(results, m))

    @cache
    def standard_content() -> Scorer:
        return LastBatch(Standardised(content[space]()))

    for name, scored in runs.items():
        served = served_run(settings, store, stored[name], scored)
        seed = int(scored["seed"])
        method = method_name(scored["backbone"], scored["variant"], run_tag(name, seed))
        methods = {method: served.run_id}
        if variant_of(method) in GENAIR_FAMILY:
            with_content = f"{served.run_id}+{space}"
            methods |= {f"{method}+mix{w:g}": with_content for w in mix_weights}
            methods |= {f"{method}+align{b:g}": served.run_id for b in align_offsets}
            methods |= {f"{method}+switch{b:g}": with_content for b in align_offsets}
        model = partial(_model_scores, served, catalog_ids, raw)
        remedies = partial(_remedies, mix_weights, align_offsets)
        score(seed, methods, partial(_run_and_remedies, method, model, standard_content, remedies))

    return _report(store, as_of, log, results)


def _model_scores(served: ServedRun, catalog_ids: list[str], raw: object) -> ModelScores:
    return ModelScores(*serving_model(served, catalog_ids, raw))


def _fresh(store: Store, partition: str, inputs: str) -> bool:
    return store.fresh_manifest(f"cold-start-{partition}", inputs) is not None


def _run_and_remedies(
    method: str,
    make_model: Callable[[], Scorer],
    content: Callable[[], Scorer],
    remedies: Callable[[Scorer, Scorer], dict[str, Scorer]],
) -> dict[str, Scorer]:
    """A run's scorer and, for a GenAIR-family run, its remedies (named `method` + theirs), all
    sharing one forward pass a batch."""
    model = LastBatch(make_model())
    if variant_of(method) not in GENAIR_FAMILY:
        return {method: model}
    named = remedies(LastBatch(Standardised(model)), content())
    return {method: model, **{method + name: scorer for name, scorer in named.items()}}


def _remedies(
    weights: tuple[float, ...], offsets: tuple[float, ...], model: Scorer, content: Scorer
) -> dict[str, Scorer]:
    """The remedies for cold items, from a run's and the content-only baseline's standardised
    scores: `+mix<weight>`, `+align<offset>` and `+switch<offset>`."""
    return {
        **{f"+mix{w:g}": MixedScores(model, content, w) for w in weights},
        **{f"+align{b:g}": AlignedScores(model, model, b) for b in offsets},
        **{f"+switch{b:g}": AlignedScores(model, content, b) for b in offsets},
    }


def _target_lines(v: Verdict) -> list[str]:
    return [
        f"- `{v.method}` against `{v.content}` on new-item targets: NDCG@10 {v.new_ndcg:.4f} "
        f"against {v.content_new_ndcg:.4f}, p = {v.p_value:.3g} over {v.users} users "
        f"({'met' if v.beats_content else 'missed'})",
        f"- its new-target NDCG@10 over its warm-target NDCG@10: {v.new_ndcg:.4f} / "
        f"{v.warm_ndcg:.4f} = {v.new_to_warm:.2f} ({'met' if v.new_to_warm >= 0.35 else 'missed'}: "
        "0.35)",
        "- its warm-target NDCG@10 with the new items among the candidates: "
        f"{v.warm_ndcg:.4f}; `{unremedied_run(v.method)}` without them "
        f"{v.warm_ndcg_without_new:.4f} ({100 * v.warm_change:+.1f}%; "
        f"{'met' if abs(v.warm_change) <= WARM_WITHIN else 'missed'}: within 5%); "
        f"`{v.method}` without them {v.own_warm_ndcg_without_new:.4f} "
        f"({100 * v.own_warm_change:+.1f}%)",
    ]


def _report(store: Store, as_of: datetime, log: ColdStartLog, results: list[Scored]) -> dict:
    lines = [
        f"# Cold start as of {as_of.isoformat()}",
        "",
        f"{int((log.kind_of_item == 0).sum()):,} of {len(log.candidate_ids):,} catalog items are "
        "new (first interacted with after T). Full-catalog ranking, the user's history masked; "
        "per user, then over users; ± the spread of the seeds.",
        "",
    ]
    summary: dict[str, object] = {"as_of": as_of.isoformat(), "methods": len(results)}
    try:
        v = verdict(results)
    except ValueError as err:
        v, against = None, None
        tail = [f"No verdict: {err}."]
    else:
        against = v.content
        tail = []
    for window in ("test", "valid"):
        lines += [f"## {window.capitalize()} window", ""]
        lines += render_results(results_table(results, window, against), window)
        if against:
            lines.append(f"p: paired Wilcoxon against `{against}` over the users both score.")
        lines.append("")
    lines += tail
    if v is not None:
        lines += [
            "## Targets (test window, chosen on the validation window)",
            "",
            "Chosen among every GenAIR-family method (the issue's rule):",
            "",
            *_target_lines(v),
        ]
        summary |= {"chosen": v.method, "content": v.content, "p_value": v.p_value}
        try:
            kept = verdict(results, warm_within=WARM_WITHIN)
        except ValueError as err:
            lines += ["", f"No method keeps its warm targets within 5% on validation: {err}."]
        else:
            lines += [
                "",
                "Chosen among the methods whose warm-target NDCG@10 on validation, the new items "
                "among the candidates, is within 5% of the unremedied run's without them:",
                "",
                *_target_lines(kept),
            ]
            summary |= {"chosen_keeping_warm": kept.method, "p_value_keeping_warm": kept.p_value}
    markdown = "\n".join(lines) + "\n"
    path = store.write_report("cold_start", markdown)
    create_markdown_artifact(
        key="genair-cold-start", markdown=markdown, description="Cold start as of T"
    )
    get_run_logger().info("cold start: report written to %s", path)
    return {**summary, "report": str(path)}
