"""The pipeline's stages, one row each, in pipeline order: what each runs, reads and writes, and
which flows run it. The three flows, `--from`/`--until`, the CLI's help and the stage table of
docs/pipeline.md (`python -m flows.stages` prints it) all come from STAGE_TABLE.

A stage names what runs it as "module:function", so this module imports nothing of the pipeline
and the CLI can list the stages before Prefect loads. It is either a Prefect task, called as
`task(settings, force=...)` (without `force` if it takes none) with the configured retries, or a
function of the flow's StageRun (flows/pipeline.py) for a stage that is more than one task call.

Adding a stage: a core function (genair_core), a storage call (storage), a thin task (tasks)
and a row here.
"""

from __future__ import annotations

from dataclasses import dataclass

FULL = "genair-full"
REFRESH = "genair-nightly-refresh"
BACKFILL = "genair-backfill"
FLOWS = (FULL, REFRESH, BACKFILL)


@dataclass(frozen=True)
class Stage:
    name: str  # what --from and --until take
    runs: str  # "module:function": a Prefect task, or a function of the StageRun
    does: str  # one line, for the CLI's help and the docs
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    flows: tuple[str, ...]
    # Trains or evaluates the recommenders: a refresh or a backfill runs it as its
    # `recommenders` policy says (never: not at all; always: from scratch, as with force).
    recommenders: bool = False


_NOT_BACKFILL = (FULL, REFRESH)

STAGE_TABLE: tuple[Stage, ...] = (
    Stage(
        "ingest",
        "tasks.ingest:ingest_dataset",
        "validate the catalog and interactions; bad rows to rejects, with their reason",
        ("the dataset's files",),
        ("items", "interactions", "rejects"),
        _NOT_BACKFILL,
    ),
    Stage(
        "split",
        "tasks.preprocess:split_interactions",
        "k-core filter, per-user sequences, leave-one-out split",
        ("interactions",),
        ("item_index", "user_index", "sequences"),
        _NOT_BACKFILL,
    ),
    Stage(
        "check",
        "flows.pipeline:run_check_stage",
        "the settings the data can be too small for: stop, naming a value that works, or adapt "
        "and warn",
        ("items", "user_index", "sequences"),
        (),
        FLOWS,
    ),
    Stage(
        "cooccurrence",
        "tasks.cooccurrence:build_cooccurrence",
        "how many users' training prefixes hold each item pair",
        ("sequences", "item_index"),
        ("cooccurrence",),
        _NOT_BACKFILL,
    ),
    Stage(
        "archetypes",
        "flows.archetype_stage:run_archetype_stage",
        "archetype and hidden-state embeddings of each new or changed item (vLLM)",
        ("items", "archetypes"),
        ("archetypes", "archetype_failures"),
        FLOWS,
    ),
    Stage(
        "pooling",
        "flows.archetype_stage:run_pooling_stage",
        "item vectors from the archetypes' embeddings (PCA bases, stored and reused)",
        ("archetypes",),
        ("item_embeddings", "PCA bases"),
        FLOWS,
    ),
    Stage(
        "calibrate",
        "tasks.calibration:calibrate_items",
        "the behavioural calibration adapter, and every item vector through it",
        ("item_embeddings", "item_index", "cooccurrence"),
        ("calibrated_embeddings", "calibration adapter"),
        FLOWS,
    ),
    Stage(
        "index",
        "flows.pipeline:run_index_stage",
        "FAISS indexes over the calibrated and the raw item vectors",
        ("calibrated_embeddings", "item_embeddings", "item_index"),
        ("indexes/calibrated", "indexes/raw"),
        FLOWS,
    ),
    Stage(
        "similar-items",
        "tasks.similar_items:export_similar_items",
        "every item's top-K neighbours from the index of `similar_items.space`, new items "
        "included: a version of a Delta table",
        ("indexes/<space>",),
        ("delta/similar_items",),
        FLOWS,
    ),
    Stage(
        "retrieval",
        "tasks.retrieval:evaluate_retrieval",
        "next-item retrieval in item space: raw, calibrated and behavioural baselines",
        ("sequences", "item_index", "item_embeddings", "calibrated_embeddings", "cooccurrence"),
        ("retrieval_metrics", "reports/retrieval.md"),
        FLOWS,
    ),
    Stage(
        "negatives",
        "tasks.recommenders:sample_eval_negatives",
        "the sampled protocol's fixed negatives per user",
        ("sequences", "item_index"),
        ("eval_negatives",),
        FLOWS,
        recommenders=True,
    ),
    Stage(
        "recommenders",
        "flows.training:train_recommenders",
        "every backbone × variant × seed trained and evaluated, `workers` at a time",
        ("sequences", "item_embeddings", "cooccurrence", "eval_negatives"),
        ("eval_ranks", "training_log", "metrics", "checkpoints"),
        FLOWS,
        recommenders=True,
    ),
    Stage(
        "results",
        "tasks.recommenders:publish_results",
        "the results table over every configured run that has finished",
        ("eval_ranks", "sequences", "eval_negatives"),
        ("metrics (popularity)", "reports/recommenders.md"),
        FLOWS,
        recommenders=True,
    ),
    Stage(
        "recommend",
        "tasks.recommend:export_recommendations",
        "every user's top-K list from the served run, new items included (no training)",
        ("item_embeddings", "items", "interactions", "the served run's weights"),
        ("recommendations (Delta)",),
        FLOWS,
    ),
)
STAGES: tuple[str, ...] = tuple(stage.name for stage in STAGE_TABLE)


def stages_of(
    flow: str, recommenders: str = "always", table: tuple[Stage, ...] = STAGE_TABLE
) -> tuple[Stage, ...]:
    """The stages `flow` runs, in order; under the policy `recommenders` "never", not those that
    train or evaluate the recommenders."""
    return tuple(
        stage
        for stage in table
        if flow in stage.flows and not (stage.recommenders and recommenders == "never")
    )


def between(start: str, until: str, table: tuple[Stage, ...] = STAGE_TABLE) -> tuple[Stage, ...]:
    """The stages from `start` to `until`, both included."""
    names = [stage.name for stage in table]
    return table[names.index(start) : names.index(until) + 1]


def markdown_table(table: tuple[Stage, ...] = STAGE_TABLE) -> str:
    """The stage table of docs/pipeline.md."""
    short = {FULL: "full", REFRESH: "refresh", BACKFILL: "backfill"}
    lines = ["| stage | does | reads | writes | flows |", "|---|---|---|---|---|"]
    for stage in table:
        flows = ", ".join(short[flow] for flow in stage.flows)
        if stage.recommenders:
            policy = ", ".join(short[flow] for flow in stage.flows if flow != FULL)
            flows = "full; " * (FULL in stage.flows) + f"{policy} as `--recommenders` says"
        reads, writes = (
            ", ".join(map(_quoted, names)) or "nothing" for names in (stage.reads, stage.writes)
        )
        lines.append(f"| `{stage.name}` | {stage.does} | {reads} | {writes} | {flows} |")
    return "\n".join(lines) + "\n"


def _quoted(name: str) -> str:
    return name if " " in name else f"`{name}`"


if __name__ == "__main__":
    print(markdown_table(), end="")
