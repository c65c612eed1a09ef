"""The genair pipeline: catalog + interactions → validated tables → splits → co-occurrence."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from genair_core.config import load_settings
from tasks.cooccurrence import build_cooccurrence
from tasks.ingest import ingest_dataset
from tasks.preprocess import split_interactions
from tasks.report import publish_summary


@flow(name="genair-pipeline")
def genair_pipeline(config_path: str | None = None, force: bool = False) -> dict[str, dict]:
    """Run every stage on the configured dataset. Steps whose inputs did not change are skipped
    (`force` reruns them); their outputs are replaced, never appended to."""
    settings = load_settings(Path(config_path) if config_path else None)
    retry = {
        "retries": settings.prefect.task_retries,
        "retry_delay_seconds": settings.prefect.retry_delay_s,
    }

    ingested = ingest_dataset.with_options(**retry)(settings, force=force)
    split = split_interactions.with_options(**retry)(settings, force=force)
    pairs = build_cooccurrence.with_options(**retry)(settings, force=force)

    summary = {"ingest": ingested, "split": split, "cooccurrence": pairs}
    publish_summary(summary)
    return summary
