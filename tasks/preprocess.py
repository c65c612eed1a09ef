"""k-core filtering, chronological sequences and the leave-one-out split; then the settings the
split data can be too small for."""

from __future__ import annotations

from prefect import task
from prefect.logging import get_run_logger

from genair_core.data.limits import check_negatives, check_pca_dims, check_top_k
from genair_core.data.preprocess import PREPROCESS_VERSION, split_sequences
from genair_core.recommenders.run_inputs import RunInputs
from genair_core.tables import INTERACTION_FIELDS
from storage.recommenders import read_run_tables, read_user_ids
from storage.store import fingerprint
from tasks.common import TASK_DEFAULTS, run_step, store_for
from tasks.settings import ConfigError, Settings


@task(name="split-sequences", **TASK_DEFAULTS)
def split_interactions(settings: Settings, force: bool = False) -> dict[str, object]:
    store = store_for(settings)
    inputs = fingerprint(
        PREPROCESS_VERSION,
        settings.preprocess.model_dump(mode="json"),
        store.table_info("interactions").sha256,
    )

    def produce() -> tuple[dict, dict]:
        interactions = store.read_table("interactions", columns=list(INTERACTION_FIELDS))
        split = split_sequences(interactions, k=settings.preprocess.k_core)
        outputs = {
            "item_index": store.write_table("item_index", split.item_index),
            "user_index": store.write_table("user_index", split.user_index),
            "sequences": store.write_table("sequences", split.sequences),
        }
        return outputs, split.summary

    return run_step(store, "split", inputs, produce, force=force)


DATA_LIMITS_VERSION = 2


@task(name="check-data-limits", **TASK_DEFAULTS)
def check_data_limits(
    settings: Settings, evaluates: bool, force: bool = False
) -> dict[str, object]:
    """Stop the run (a ConfigError: one line, exit 2) when a setting asks for more than the split
    tables hold, and warn where the run adapts (genair_core.data.limits). The negatives are
    checked only when this run `evaluates` the recommenders. The warnings are repeated when the
    check is skipped on unchanged inputs."""
    store = store_for(settings)
    negatives = settings.recommenders.evaluation.negatives if evaluates else None
    pca = (settings.pooling.input_dims, settings.pooling.gen_dims, settings.recommenders.variants)
    llm = (settings.llm.items, settings.llm.max_items)
    top_k = (settings.recommend.k, settings.similar_items.k)
    tables = store.table_hashes(["items", "user_index", "sequences"])
    inputs = fingerprint(DATA_LIMITS_VERSION, negatives, pca, llm, top_k, *tables.values())

    def produce() -> tuple[dict, dict]:
        data = RunInputs.from_tables(read_run_tables(store, ["sequences"])).data
        user_ids = read_user_ids(store)
        catalog = settings.llm.items == "catalog"
        items = store.table_info("items").rows if catalog else data.n_items
        if settings.llm.max_items:
            items = min(items, settings.llm.max_items)
        limits = check_pca_dims(settings.pooling, items, settings.recommenders.variants)
        problems = list(limits.problems)
        if negatives is not None:
            problems += check_negatives(negatives, data, user_ids)
        if problems:
            raise ConfigError("\n".join(problems))
        warnings = [*limits.warnings, *check_top_k(*top_k, items)]
        return {}, {"users": data.n_users, "items": items, "warnings": warnings}

    summary = run_step(store, "check", inputs, produce, force=force)
    for warning in summary["warnings"]:
        get_run_logger().warning(warning)
    return summary
