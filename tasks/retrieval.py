"""Next-item retrieval in item space: the raw and calibrated item vectors against co-occurrence
counts, popularity and random, on the users' held-out items."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from genair_core.item_space.retrieval import RETRIEVAL_VERSION, retrieval_evaluation
from storage.retrieval import CALIBRATED, read_retrieval_tables, retrieval_input_tables
from storage.store import fingerprint
from tasks.common import TASK_DEFAULTS, run_step, store_for
from tasks.settings import Settings

RETRIEVAL_REPORT = "retrieval"


@task(name="item-retrieval", **TASK_DEFAULTS)
def evaluate_retrieval(settings: Settings, force: bool = False) -> dict[str, object]:
    """retrieval_metrics and reports/retrieval.md (also the artifact `genair-retrieval`)."""
    store = store_for(settings)
    logger = get_run_logger()
    tables = retrieval_input_tables(store)
    if CALIBRATED not in tables:
        logger.info("retrieval: no %s yet; the calibrated space is skipped", CALIBRATED)
    inputs = fingerprint(RETRIEVAL_VERSION, settings.dataset.name, store.table_hashes(tables))

    def produce() -> tuple[dict, dict]:
        outcome = retrieval_evaluation(read_retrieval_tables(store, tables), settings.dataset.name)
        info = store.write_table("retrieval_metrics", outcome.table)
        path = store.write_report(RETRIEVAL_REPORT, outcome.markdown)
        create_markdown_artifact(
            key="genair-retrieval", markdown=outcome.markdown, description="item-space retrieval"
        )
        logger.info("retrieval: %s; report %s", outcome.summary, path)
        return {"retrieval_metrics": info}, {**outcome.summary, "report": str(path)}

    return run_step(store, "retrieval", inputs, produce, force=force)
