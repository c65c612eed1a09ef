"""Read the configured dataset, validate every row, write items, interactions and rejects."""

from __future__ import annotations

from prefect import task
from prefect.logging import get_run_logger

from genair_core.data.ingest import INGEST_VERSION, AsOf, Held, first_interactions, ingest
from storage.items import item_versions
from storage.sources import input_fingerprint
from storage.sql import rejects_by_reason
from storage.store import fingerprint
from tasks.common import TASK_DEFAULTS, run_step, store_for
from tasks.datasets import dataset_kind
from tasks.settings import Settings

OUTPUTS = ("items", "interactions", "rejects")


@task(name="ingest-dataset", **TASK_DEFAULTS)
def ingest_dataset(settings: Settings, force: bool = False) -> dict[str, object]:
    store = store_for(settings)
    kind = dataset_kind(settings.dataset)
    dataset = kind.mapping.from_config(settings.dataset)
    files = kind.opener(settings.dataset, settings.storage.cache_dir)
    inputs = fingerprint(
        INGEST_VERSION,
        settings.dataset.model_dump(mode="json"),
        input_fingerprint(files.input_files),
    )

    def produce() -> tuple[dict, dict]:
        as_of, held = None, Held()
        if settings.dataset.as_of is not None:
            first_seen = first_interactions(dataset, files.interaction_records())
            as_of = AsOf(settings.dataset.as_of, first_seen)
        batches = ingest(
            dataset,
            files.item_records(),
            files.interaction_records(),
            max_field_chars=settings.dataset.max_field_chars,
            known=item_versions(store),
            as_of=as_of,
            held=held,
        )
        outputs = store.write_streams(OUTPUTS, batches)
        summary = {
            "dataset": dataset.name,
            "rows": {name: info.rows for name, info in outputs.items()},
            "rejects_by_reason": rejects_by_reason(store),
        }
        if as_of is not None:
            summary["as_of"] = {
                "time": as_of.time.isoformat(),
                "held_back": {"items": held.items, "interactions": held.interactions},
            }
            get_run_logger().info(
                "as of %s: %d items and %d interactions come later, not read",
                as_of.time.isoformat(),
                held.items,
                held.interactions,
            )
        return outputs, summary

    return run_step(store, "ingest", inputs, produce, force=force)
