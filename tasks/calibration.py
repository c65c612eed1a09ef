"""The calibration job: calibrated_embeddings through a stored (or newly trained) adapter."""

from __future__ import annotations

from prefect import task
from prefect.logging import get_run_logger

from genair_core.item_space.calibration import (
    CALIBRATION_VERSION,
    Adapter,
    calibrate,
    calibration_inputs,
    calibration_settings_id,
)
from storage.calibration import AdapterFiles
from storage.store import fingerprint
from tasks.common import TASK_DEFAULTS, run_step, store_for
from tasks.settings import Settings

INPUTS = ("item_embeddings", "item_index", "cooccurrence")


@task(name="calibrate", **TASK_DEFAULTS)
def calibrate_items(settings: Settings, force: bool = False) -> dict[str, object]:
    """Every item with an item vector through the calibration adapter. The adapter is trained
    when none is stored for these settings, on `force` or `calibration.retrain`, or when the
    raw space or the co-occurrence table moved too far; otherwise new items are projected."""
    store = store_for(settings)
    cfg = settings.calibration
    files = AdapterFiles(store, calibration_settings_id(cfg))
    hashes = store.table_hashes(list(INPUTS))
    inputs = fingerprint(CALIBRATION_VERSION, cfg.model_dump(mode="json"), hashes)
    retrain = force or cfg.retrain

    def produce() -> tuple[dict, dict]:
        data = calibration_inputs(*(store.read_table(name) for name in INPUTS))
        stored = None if retrain else files.read()
        adapter = Adapter.from_stored(*stored) if stored else None
        result = calibrate(data, cfg, stored=adapter, inputs=hashes, retrain=retrain)
        if result.adapter is not None:
            files.write(result.adapter.tensors(), result.adapter.info)
        info = store.write_table("calibrated_embeddings", result.table)
        get_run_logger().info("calibrate: %s", result.summary)
        return {"calibrated_embeddings": info}, result.summary

    return run_step(store, "calibrate", inputs, produce, force=retrain or not files.exists())
