"""The archetype stage on a Dask LocalCluster of 2 worker processes (prefect-dask) writes the same
tables as on the default thread runner, each worker with an engine of its own, and keeps the
failure isolation. The real default model through the transformers engine on the small dataset.
"""

import os
from pathlib import Path

import numpy as np
import pytest
from prefect import flow
from small_dataset import write_small_dataset
from test_archetype_stage import EngineScript, set_title

from flows.archetype_stage import generate_archetypes
from genair_core.llm.engines import EngineFactory, EnginePool, make_engine
from storage.sql import connect
from storage.store import Store
from tasks.archetypes import plan_archetypes
from tasks.ingest import ingest_dataset
from tasks.settings import ConfigError, load_settings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
DASK = {"GENAIR_PREFECT__TASK_RUNNER": "dask", "GENAIR_PREFECT__DASK_WORKERS": "2"}
ROWS = """SELECT item_id, content_hash, model_id, prompt_version, settings_id, archetype,
    prompt_tokens, completion_tokens, finish_reason, input_emb, gen_emb
    FROM archetypes ORDER BY item_id"""


@flow(name="archetype-stage", validate_parameters=False, persist_result=False)
def archetype_stage(config_path: str, engine_factory: EngineFactory) -> dict[str, object]:
    settings = load_settings(Path(config_path))
    ingest_dataset(settings)
    with EnginePool(engine_factory) as engines:
        return generate_archetypes(settings, plan_archetypes(settings), engines)


class RecordingFactory:
    """make_engine, leaving a file named after the process that made each engine."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, name, model_dir, settings, **options):
        with open(self.folder / f"engine-{os.getpid()}", "a") as made:
            made.write(f"{name}\n")
        return make_engine(name, model_dir, settings, **options)


def _config(folder: Path, extra: str) -> Path:
    folder.mkdir()
    config = write_small_dataset(folder)
    config.write_text(config.read_text() + extra)
    return config


def _archetypes(config: Path) -> list[tuple]:
    return connect(Store(config.parent / "data")).sql(ROWS).fetchall()


def test_dask_workers_write_the_same_archetypes_as_threads(tmp_path, test_cache_dir, monkeypatch):
    # One item a batch: 4 batches over 2 workers, so a worker serves several with one engine.
    extra = '[llm]\nengine = "transformers"\nmax_new_tokens = 32\nbatch_size = 1\n'
    threaded_config = _config(tmp_path / "threads", extra)
    monkeypatch.setenv("GENAIR_STORAGE__CACHE_DIR", str(test_cache_dir))
    threaded = archetype_stage(str(threaded_config), make_engine)

    for name, value in DASK.items():
        monkeypatch.setenv(name, value)
    dask_config = _config(tmp_path / "dask", extra)
    made = tmp_path / "engines"
    made.mkdir()
    on_dask = archetype_stage(str(dask_config), RecordingFactory(made))

    assert (threaded["generated"], threaded["batches"]) == (4, 4)
    assert on_dask == threaded
    rows, dask_rows = _archetypes(threaded_config), _archetypes(dask_config)
    assert [r[0] for r in dask_rows] == ["A", "B", "C", "D"]
    assert [r[:9] for r in dask_rows] == [r[:9] for r in rows]  # keys, texts, token counts
    for ours, theirs in zip(dask_rows, rows, strict=True):
        for column in (9, 10):  # input_emb, gen_emb
            np.testing.assert_allclose(ours[column], theirs[column], rtol=0, atol=1e-5)

    # Engines were made in the worker processes, never in the flow's, one per worker process
    # (a process that ran several batches made one engine for them).
    makers = {path.name.removeprefix("engine-"): path.read_text() for path in made.iterdir()}
    assert 1 <= len(makers) <= 2
    assert str(os.getpid()) not in makers
    assert all(lines == "transformers\n" for lines in makers.values())


def test_a_poisoned_item_is_isolated_on_dask_workers(tmp_path, monkeypatch):
    model = tmp_path / "scripted-model"
    model.mkdir()
    (model / "config.json").write_text('{"max_position_embeddings": 4096}')
    config = _config(tmp_path / "run", f'[llm]\nmodel = "{model}"\nbatch_size = 2\n')
    set_title(config, "C", "POISON pill")
    for name, value in DASK.items():
        monkeypatch.setenv(name, value)
    summary = archetype_stage(str(config), EngineScript())

    assert (summary["generated"], summary["failed"]) == (3, 1)
    assert [r[0] for r in _archetypes(config)] == ["A", "B", "D"]
    failures = (
        connect(Store(config.parent / "data"))
        .sql("SELECT item_id, reason, detail FROM archetype_failures")
        .fetchall()
    )
    assert failures == [("C", "engine_error", "RuntimeError: engine crashed on a poisoned item")]


def test_a_scheduler_address_needs_the_dask_runner(tmp_path, monkeypatch):
    config = _config(tmp_path / "run", "")
    monkeypatch.setenv("GENAIR_PREFECT__DASK_ADDRESS", "tcp://127.0.0.1:8786")
    with pytest.raises(ConfigError, match=r'dask_address is set but task_runner is not "dask"'):
        load_settings(config)
