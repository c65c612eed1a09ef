"""Where the archetype batches run: the task runner `[prefect] task_runner` names, and the engines
its tasks use.

    with batch_runner(settings.prefect, engines) as batches:
        future = batches.runner.submit(task, {..., "engines": batches.engines})

- threads (default): a pool of one thread in the flow's process; every batch uses the flow's
  EnginePool, so one engine serves them one after another (a GPU engine batches inside itself).
- dask: prefect-dask's DaskTaskRunner, on a local cluster of `dask_workers` processes with one
  thread each, or on the running scheduler at `dask_address`. An engine cannot travel between
  processes: every worker process builds a pool of its own from the flow pool's factory (a
  worker plugin registered for the stage; removing it afterwards closes those engines), and the
  tasks get a WorkerEngines, which resolves to the pool of the process the task runs in.

Task parameters and results travel to and from Dask workers by Dask's own serialisation
(cloudpickle), in memory only; what a batch produces is written by the task itself as Parquet.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin, get_worker
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from genair_core.config import LlmConfig
from genair_core.llm.engines import ArchetypeEngine, EngineFactory, EnginePool
from tasks.settings import PrefectConfig


@dataclass(frozen=True)
class BatchRunner:
    runner: TaskRunner  # entered; submit(task, parameters) -> PrefectFuture
    engines: EnginePool | WorkerEngines  # what the tasks' `engines` parameter gets
    slots: int  # batches that can run at the same time
    where: str  # for the log: where the batches run


@contextlib.contextmanager
def batch_runner(prefect: PrefectConfig, engines: EnginePool) -> Iterator[BatchRunner]:
    """The runner the settings ask for, entered, with the engines its tasks use. Leaving it
    waits for or cancels what still runs, and closes the Dask workers' engines."""
    if prefect.task_runner == "threads":
        with ThreadPoolTaskRunner(max_workers=1) as runner:
            yield BatchRunner(runner, engines, slots=1, where="the flow's process (threads)")
        return

    import dask
    from prefect_dask import DaskTaskRunner

    if prefect.dask_address:
        runner = DaskTaskRunner(address=prefect.dask_address)
        where = f"the Dask scheduler at {prefect.dask_address}"
    else:
        local = {"n_workers": prefect.dask_workers, "threads_per_worker": 1, "processes": True}
        runner = DaskTaskRunner(cluster_kwargs={**local, "dashboard_address": None})
        where = f"a local Dask cluster of {prefect.dask_workers} worker processes"
    plugin = EnginePlugin(engines.factory)
    # vLLM starts its engine core as a child process, which a daemonic worker may not have.
    with dask.config.set({"distributed.worker.daemon": False}), runner:
        client = runner.client  # starts the local cluster, or connects
        client.register_plugin(plugin, name=plugin.name)
        try:
            slots = sum(client.nthreads().values())
            yield BatchRunner(runner, WorkerEngines(plugin.name), slots=max(slots, 1), where=where)
        finally:
            client.unregister_worker_plugin(plugin.name)


class EnginePlugin(WorkerPlugin):
    """A Dask worker's own EnginePool for the length of one stage, closed when removed."""

    def __init__(self, factory: EngineFactory) -> None:
        self.name = f"genair-engines-{uuid.uuid4().hex[:12]}"
        self.factory = factory

    def setup(self, worker: Any) -> None:
        self.engines = EnginePool(self.factory)
        # A worker with several threads runs several tasks at once; an engine serves one.
        self.lock = threading.Lock()

    def teardown(self, worker: Any) -> None:
        self.engines.close()


class WorkerEngines:
    """Stands in for the flow's EnginePool in a task shipped to a Dask worker: `using` gives the
    engine of the worker process the task runs in, made there on first use."""

    def __init__(self, plugin_name: str) -> None:
        self.plugin_name = plugin_name

    @contextlib.contextmanager
    def using(self, llm: LlmConfig, model_dir: Path) -> Iterator[ArchetypeEngine]:
        plugin = get_worker().plugins[self.plugin_name]
        with plugin.lock, plugin.engines.using(llm, model_dir) as engine:
            yield engine
