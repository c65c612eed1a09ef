"""k-core filtering, chronological sequences and the leave-one-out split."""

from __future__ import annotations

from prefect import task

from genair_core.preprocess import PREPROCESS_VERSION, split_sequences
from genair_core.tables import INTERACTION_FIELDS
from storage.store import fingerprint
from tasks.common import TASK_DEFAULTS, run_step, store_for
from tasks.settings import Settings


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
