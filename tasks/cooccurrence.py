"""Item co-occurrence over the users' training prefixes."""

from __future__ import annotations

from prefect import task

from genair_core.data.cooccurrence import COOCCURRENCE_VERSION, cooccurrence, cooccurrence_summary
from storage.store import fingerprint
from tasks.common import TASK_DEFAULTS, run_step, store_for
from tasks.settings import Settings

SEQUENCE_COLUMNS = ["user_idx", "item_idx", "split"]


@task(name="cooccurrence", **TASK_DEFAULTS)
def build_cooccurrence(settings: Settings, force: bool = False) -> dict[str, object]:
    store = store_for(settings)
    inputs = fingerprint(
        COOCCURRENCE_VERSION,
        store.table_info("sequences").sha256,
        store.table_info("item_index").sha256,
    )

    def produce() -> tuple[dict, dict]:
        sequences = store.read_table("sequences", columns=SEQUENCE_COLUMNS)
        n_items = store.table_info("item_index").rows
        pairs = cooccurrence(sequences, n_items=n_items)
        info = store.write_table("cooccurrence", pairs)
        return {"cooccurrence": info}, cooccurrence_summary(pairs)

    return run_step(store, "cooccurrence", inputs, produce, force=force)
